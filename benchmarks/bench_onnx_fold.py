"""Benchmark: `wnconvert fold MODEL.onnx` against onnxslim on models exported by PyTorch.

Two models (``--model``), both exported with ``torch.onnx.export(dynamo=True)``, which leaves
one ReduceL2 -> Div -> Mul chain per weight-normed layer:
  speecht5    transformers' SpeechT5 HiFi-GAN at its default size (12.7 M parameters, 65
              weight-norm chains, 51 MB; random weights from its config, nothing downloaded).
              Issue 22's goal: `wnconvert fold` *with* its verification <= 0.5x onnxslim's time,
              peak RSS <= 1.5x the model's size.
  conv-stack  a ~1 GB stack of weight-normed Conv1d layers (--size-gb): large tensors, issue 4.
The export writes the weights as external data; an inline copy of the same model (one .onnx
file, < 2 GB) is made too, and every tool runs on the layouts asked for (--layouts).

Compared, each in a fresh subprocess (start-up and imports count, as for a user):
  wnconvert   `wnconvert fold in.onnx -o out.onnx --no-verify` (and, for information, with its
              default ONNX Runtime verification)
  onnxslim    `onnxslim in.onnx out.onnx` (generic constant folding and graph clean-up)
  ort         ONNX Runtime's offline optimization: an InferenceSession with
              ``optimized_model_filepath`` (basic level: constant folding), writing external
              initializers for the external layout

Measured too (no output model; for the peak-RSS figures of issue 10):
  wnconvert-check   `wnconvert check in.onnx` (graph validation + lint; exit 1 = weight norm found)
  checker-path      ``onnx.checker.check_model(path, full_check=True)`` given the file, as a
                    comparison for wnconvert's skeleton check (it parses inline data too)
  ir-load-save      ``onnx_ir.load`` + ``onnx_ir.save``: what graph plumbing through onnx_ir costs

  imports     ``import onnx, onnxruntime, numpy`` and nothing else: the floor every tool here
              pays (start-up, and onnx's import of ml_dtypes), for the profile in
              docs/performance.md

Reports wall time, CPU seconds (user + system of every thread: the figure that does not depend
on the machine's load) and peak RSS (from the kernel, via os.wait4), min / median / max of --repeat
rounds after a warm-up round (so the input is in the page cache for everybody; the tools take
turns, so all see the same background load), whether each output still computes
weight norm at run time (wnconvert's own lint), and the largest output difference from the
original model on ONNX Runtime. Then the ratios of wnconvert to onnxslim, round by round (the
two ran back to back, under the same load), as min / median / max. Targets: issue 4 (conv-stack)
wnconvert faster than both, peak RSS under 2x the model size; issue 22 (speecht5) verified
fold <= 0.5x onnxslim.

    python benchmarks/bench_onnx_fold.py [--model speecht5] [--repeat 3] [--dir benchmarks/out]
    python benchmarks/bench_onnx_fold.py --model conv-stack --size-gb 1.0 --layouts external,inline
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import run_measured

ORT_OFFLINE = """
import sys, onnxruntime as ort
src, out, external = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
options.optimized_model_filepath = out
if external:
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", out.rsplit("/", 1)[-1] + ".data")
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
"""

CHANNELS, KERNEL = 1024, 31  # 1024*1024*31 float32 = 130 MB per layer


def make_model(folder: Path, size_gb: float, kind: str) -> Path:
    """Export the weight-normed model (external data, as torch writes it)."""
    import warnings

    import torch
    from torch import nn

    if kind == "speecht5":
        sys.path.insert(0, str(Path(__file__).parent))
        from speecht5_model import build_speecht5_hifigan

        model = build_speecht5_hifigan()
        model.apply_weight_norm()  # weight norm computed at run time: 65 chains in the graph
        example = torch.randn(1, 100, 80)
    else:
        layer_bytes = CHANNELS * CHANNELS * KERNEL * 4
        layers = max(1, round(size_gb * 1e9 / layer_bytes))
        torch.manual_seed(0)
        model = nn.Sequential(*[
            nn.utils.parametrizations.weight_norm(
                nn.Conv1d(CHANNELS, CHANNELS, KERNEL, padding=KERNEL // 2)
            )
            for _ in range(layers)
        ]).eval()
        example = torch.randn(1, CHANNELS, 8)
    path = folder / "wn_external.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=True,
                          external_data=True, input_names=["x"], output_names=["y"])
    return path


def make_inline(external: Path, inline: Path) -> None:
    import onnx

    onnx.save(onnx.load(str(external)), str(inline))


def model_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def run(cmd: list[str], output: Path) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB) and CPU seconds (user + system, every thread) of one run.

    CPU seconds do not depend on what else the machine runs, where wall seconds do: on a
    shared machine they are the figure to compare. Every tool here is one process (wnconvert
    runs its reference in a thread, not a child), so ``wait4`` covers all of it.
    """
    wall, cpu, peak = run_measured(cmd, [output, output.with_name(output.name + ".data")])
    return wall, peak, cpu


def check_output(original: Path, output: Path) -> dict[str, object]:
    """:func:`compare` in a child process: this process must stay small, because a child's
    peak RSS as the kernel reports it starts from its parent's size at fork."""
    done = subprocess.run([sys.executable, __file__, "--compare", str(original), str(output)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def compare(original: Path, output: Path) -> dict[str, object]:
    """Run-time weight norm left in the output, and its largest difference from the original."""
    import numpy as np
    import onnxruntime as ort

    from wnconvert.onnx_graph import check_file

    left = len(check_file(output).sites)
    ref = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    shape = ref.get_inputs()[0].shape  # static in both exports
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = ref.run(None, {"x": x})[0]
    del ref
    got = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    return {"weight_norm_left": left, "max_abs_diff": float(np.max(np.abs(got - expected))),
            "output_mb": round(model_bytes(output) / 1e6, 1)}


CHECKER_PATH = """
import sys, onnx
onnx.checker.check_model(sys.argv[1], full_check=True)
"""
IR_LOAD_SAVE = """
import sys, onnx_ir as ir
model = ir.load(sys.argv[1])
ir.save(model, sys.argv[2], external_data=sys.argv[2].rsplit("/", 1)[-1] + ".data"
        if sys.argv[3] == "1" else None)
"""
IMPORTS = "import numpy, onnx, onnxruntime"
# Tools that write no model to compare (peak RSS and time only).
MEASURE_ONLY = ("wnconvert-check", "checker-path", "ir-load-save", "imports")


def command(tool: str, src: Path, work: Path, layout: str,
            bin_dir: Path) -> tuple[list[str], Path]:
    out = work / f"out_{tool.replace('+', '_')}_{layout}.onnx"
    cmd = {
        "wnconvert": [str(bin_dir / "wnconvert"), "fold", str(src), "-o", str(out),
                      "--no-verify", "--force", "--quiet"],
        "wnconvert+verify": [str(bin_dir / "wnconvert"), "fold", str(src), "-o", str(out),
                             "--force", "--quiet"],
        "onnxslim": [str(bin_dir / "onnxslim"), str(src), str(out)]
        + (["--save-as-external-data"] if layout == "external" else []),
        "ort": [sys.executable, "-c", ORT_OFFLINE, str(src), str(out),
                "1" if layout == "external" else "0"],
        # exit 1 means "weight norm found", the expected verdict on this model
        "wnconvert-check": ["sh", "-c", f'"{bin_dir / "wnconvert"}" check "{src}" --quiet; '
                            'test $? -le 1'],
        "checker-path": [sys.executable, "-c", CHECKER_PATH, str(src)],
        "ir-load-save": [sys.executable, "-c", IR_LOAD_SAVE, str(src), str(out),
                         "1" if layout == "external" else "0"],
        "imports": [sys.executable, "-c", IMPORTS],
    }[tool]
    return cmd, out


DEFAULTS = {  # --model: (layouts, tools)
    "speecht5": ("external", "wnconvert+verify,onnxslim,wnconvert,imports"),
    "conv-stack": ("external,inline", "wnconvert,wnconvert+verify,onnxslim,ort"),
}
# Ratio goals against onnxslim, per --model: (tool, at most)
GOALS = {"speecht5": ("wnconvert+verify", 0.5), "conv-stack": ("wnconvert", 1.0)}
RSS_GOALS = {"speecht5": ("wnconvert+verify", 1.5), "conv-stack": ("wnconvert", 2.0)}


def spread(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return ordered[0], ordered[len(ordered) // 2], ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(DEFAULTS), default="speecht5")
    parser.add_argument("--size-gb", type=float, default=1.0, help="conv-stack only")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None,
                        help="work folder, kept (default: a temp dir, deleted)")
    parser.add_argument("--layouts", help="external,inline (default: per --model)")
    parser.add_argument("--tools", help="comma-separated (default: per --model)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--make", type=Path, help=argparse.SUPPRESS)  # internal: make the input
    parser.add_argument("--compare", type=Path, nargs=2, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.compare:
        print(json.dumps(compare(*args.compare)))
        return
    if args.make:
        make_inline(make_model(args.make, args.size_gb, args.model), args.make / "wn_inline.onnx")
        return
    layouts = (args.layouts or DEFAULTS[args.model][0]).split(",")
    tools = (args.tools or DEFAULTS[args.model][1]).split(",")

    work = args.dir or Path(tempfile.mkdtemp(prefix="wnconvert-bench-onnx-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs = {"external": work / "wn_external.onnx", "inline": work / "wn_inline.onnx"}
    bin_dir = Path(sys.executable).parent
    results: list[dict[str, object]] = []
    ratios: dict[tuple[str, str], list[float]] = {}
    cpu_ratios: dict[tuple[str, str], list[float]] = {}
    try:
        if not all(p.exists() for p in inputs.values()):
            # Made in a child so this process stays small.
            subprocess.run([sys.executable, __file__, "--make", str(work), "--size-gb",
                            str(args.size_gb), "--model", args.model], check=True)
        for layout in layouts:
            src = inputs[layout]
            size = model_bytes(src)
            commands = {tool: command(tool, src, work, layout, bin_dir) for tool in tools}
            # Round-robin (one warm-up round, then --repeat rounds), so every tool samples the
            # same background load.
            samples: dict[str, list[tuple[float, float, float]]] = {
                tool: [] for tool in commands}
            for round_ in range(args.repeat + 1):
                for tool, (cmd, out) in commands.items():
                    sample = run(cmd, out)
                    if round_:
                        samples[tool].append(sample)
            if "onnxslim" in samples:
                for tool in samples:
                    if tool.startswith("wnconvert"):
                        ratios[(layout, tool)] = [
                            ours[0] / slim[0] for ours, slim in
                            zip(samples[tool], samples["onnxslim"], strict=True)]
                        cpu_ratios[(layout, tool)] = [
                            ours[2] / slim[2] for ours, slim in
                            zip(samples[tool], samples["onnxslim"], strict=True)]
            for tool, (_, out) in commands.items():
                times, rss, cpu = zip(*samples[tool], strict=True)
                low, mid, high = spread(list(times))
                row = {"tool": tool, "layout": layout, "model_mb": round(size / 1e6, 1),
                       "min_s": round(low, 2), "median_s": round(mid, 2),
                       "max_s": round(high, 2), "median_cpu_s": round(spread(list(cpu))[1], 2),
                       "peak_rss_mb": round(max(rss)),
                       "rss_over_model": round(max(rss) * 2**20 / size, 2)}
                if tool not in MEASURE_ONLY:
                    row.update(check_output(src, out))  # the last round's output
                else:
                    row.update(weight_norm_left=-1, max_abs_diff=float("nan"))
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                for stale in (out, out.with_name(out.name + ".data")):
                    stale.unlink(missing_ok=True)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"{os.cpu_count()} CPUs (load average {os.getloadavg()[1]:.1f} over the last 5 "
          f"minutes), {args.repeat} rounds after a warm-up, tools interleaved; model: "
          f"{args.model}")
    header = (f"{'tool':18} {'layout':9} {'model MB':>9} {'min s':>6} {'median s':>8} "
              f"{'max s':>6} {'CPU s':>6} {'peak RSS MB':>12} {'RSS/model':>9} {'WN left':>7} "
              f"{'max |diff|':>10}")
    print(header)
    for r in results:
        print(f"{r['tool']:18} {r['layout']:9} {r['model_mb']:9.1f} {r['min_s']:6.2f} "
              f"{r['median_s']:8.2f} {r['max_s']:6.2f} {r['median_cpu_s']:6.2f} "
              f"{r['peak_rss_mb']:12.0f} {r['rss_over_model']:9.2f} "
              f"{r['weight_norm_left']:7d} {r['max_abs_diff']:10.2g}")
    goal_tool, goal = GOALS[args.model]
    rss_tool, rss_goal = RSS_GOALS[args.model]
    for (layout, tool), values in ratios.items():
        low, mid, high = spread(values)
        verdict = ""
        if tool == goal_tool:
            verdict = f" (goal <= {goal}: {'met' if mid <= goal else 'MISSED'} at the median)"
        print(f"{layout}: {tool} / onnxslim, round by round: min {low:.2f} median {mid:.2f} "
              f"max {high:.2f}{verdict}")
        low, mid, high = spread(cpu_ratios[(layout, tool)])
        print(f"{layout}: {tool} / onnxslim in CPU seconds (user + system), round by round: "
              f"min {low:.2f} median {mid:.2f} max {high:.2f}")
    for r in results:
        if r["tool"] == rss_tool:
            ok = float(r["rss_over_model"]) <= rss_goal  # type: ignore[arg-type]
            print(f"{r['layout']}: {rss_tool} peak RSS {r['peak_rss_mb']} MB = "
                  f"{r['rss_over_model']}x the model (goal <= {rss_goal}x: "
                  f"{'met' if ok else 'MISSED'})")
    if args.json:
        args.json.write_text(json.dumps({"cpus": os.cpu_count(), "model": args.model,
                                         "results": results,
                                         "ratios": {f"{k[0]}/{k[1]}": v
                                                    for k, v in ratios.items()},
                                         "cpu_ratios": {f"{k[0]}/{k[1]}": v
                                                        for k, v in cpu_ratios.items()}},
                                        indent=2))


if __name__ == "__main__":
    main()
