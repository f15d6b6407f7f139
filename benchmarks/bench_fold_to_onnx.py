"""How long ``wnconvert fold CKPT --to onnx`` (export + verification) takes against the
hand-written path it replaces, and where its time goes.

The model is transformers' SpeechT5 HiFi-GAN at its default size (12.7 M parameters, 65
weight-normed layers, random weights from its config; ``pip install transformers``, the
``bench`` extra); the checkpoint is its weight-normed state dict (g/v pairs) as safetensors.

Compared, each in a fresh process (start-up and imports count, as for a user), interleaved round
by round so that both see the same background load:

  wnconvert     ``wnconvert fold CKPT --to onnx --model ... --input 1x100x80 --provider cpu``:
                load, fold, export, then verification (ORT against PyTorch with weight norm,
                weight diff, report)
  hand-written  what a user writes without wnconvert (the floor: issue 22 asks for <= 0.9x of
                it): imports, build the model, load the checkpoint, remove the parametrizations,
                ``torch.onnx.export(dynamo=True)``, one ONNX Runtime run, one PyTorch run (of the
                weight-normed model), compare

Prints min / median / max wall seconds of each, the median CPU seconds (user + system, every
thread, from the kernel: they hardly depend on what else runs on a shared machine), and the
ratios wnconvert / hand-written round by round (wall and CPU), ending with the README's row. The
order within a round alternates, so neither always runs first. With
``--stages``, the shipped tiny fixture and the SpeechT5 model are also timed stage by stage in
this process (load, export, ORT session, verification), through the library's own functions.

    python benchmarks/bench_fold_to_onnx.py [--repeat 3] [--stages]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from measure import run_measured

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # speecht5_model

GOAL = 0.9  # wnconvert / hand-written, issue 22
SPEECHT5 = "benchmarks/speecht5_model.py:build_speecht5_hifigan"

HAND_WRITTEN = r"""
import sys, warnings
import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file
from torch.nn.utils import parametrize
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

checkpoint, out = sys.argv[1], sys.argv[2]
state = load_file(checkpoint)


def weight_normed():
    model = SpeechT5HifiGan(SpeechT5HifiGanConfig()).eval()
    model.apply_weight_norm()
    model.load_state_dict(state)
    return model


# Two builds: a deepcopy shares the parametrized classes, and removing the parametrizations
# from the copy would break the reference.
reference, plain = weight_normed(), weight_normed()
for module in list(plain.modules()):  # fold g/v into plain weights (float32)
    if parametrize.is_parametrized(module, "weight"):
        parametrize.remove_parametrizations(module, "weight")
x = torch.randn(1, 100, 80, generator=torch.Generator().manual_seed(0))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(plain, (x,), out, dynamo=True, input_names=["x"], output_names=["y"])
session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
got = session.run(None, {"x": x.numpy()})[0]
with torch.inference_mode():
    expected = reference(x).numpy()
assert np.allclose(got, expected, atol=1e-4, rtol=1e-3), np.abs(got - expected).max()
"""

CASES = {
    "fixture": {
        "checkpoint": REPO / "fixtures" / "tiny_hifigan_parametrize.pt",
        "model": "fixtures/models.py:build_generator",
        "kwargs": {"weight_norm": "none"},
        "input": "1x16x64",
    },
    "speecht5": {
        "checkpoint": None,  # written by weight_normed_state_dict()
        "model": SPEECHT5,
        "kwargs": {},
        "input": "1x100x80",
    },
}


def stages(case: dict, checkpoint: Path, out: Path) -> dict[str, float]:
    """Seconds per stage, in this process, through the library."""
    import onnxruntime as ort

    from wnconvert.cli.parse import parse_input_spec
    from wnconvert.export import example_inputs, export_onnx, prepare_model
    from wnconvert.formats import load_checkpoint
    from wnconvert.verification import VerifyOptions, verify_onnx_against_torch

    spec = parse_input_spec(case["input"])
    t0 = time.perf_counter()
    state = load_checkpoint(checkpoint).state_dict
    prepared = prepare_model(state, model=case["model"], model_kwargs=case["kwargs"],
                             source=str(checkpoint))
    t1 = time.perf_counter()
    export_onnx(prepared.plain, example_inputs([spec]), output=out, force=True)
    t2 = time.perf_counter()
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    t3 = time.perf_counter()
    report = verify_onnx_against_torch(out, prepared.reference,
                                       options=VerifyOptions(input_specs=(spec,),
                                                             providers=("cpu",)),
                                       reference_weights=prepared.weights)
    t4 = time.perf_counter()
    if not report.passed:
        raise SystemExit(f"verification failed: {report.failures()}")
    return {"load": t1 - t0, "export": t2 - t1, "ort_session": t3 - t2, "verify": t4 - t3}


def spread(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return ordered[0], ordered[len(ordered) // 2], ordered[-1]


def speecht5_checkpoint(folder: Path) -> Path:
    from safetensors.torch import save_file
    from speecht5_model import weight_normed_state_dict

    checkpoint = folder / "speecht5.safetensors"
    save_file(weight_normed_state_dict(), str(checkpoint))
    return checkpoint
def compare(folder: Path, repeat: int) -> dict[str, object]:
    """wnconvert and the hand-written path, interleaved: one warm-up round, then ``repeat``
    (the order within a round alternates, so neither always runs first)."""
    checkpoint = speecht5_checkpoint(folder)
    outputs = {"wnconvert": folder / "wnconvert.onnx", "hand-written": folder / "hand.onnx"}
    commands = {
        "wnconvert": [sys.executable, "-m", "wnconvert", "fold", str(checkpoint), "--to",
                      "onnx", "--model", SPEECHT5, "--input", "1x100x80", "--provider", "cpu",
                      "-o", str(outputs["wnconvert"]), "--force", "--quiet"],
        "hand-written": [sys.executable, "-c", HAND_WRITTEN, str(checkpoint),
                         str(outputs["hand-written"])],
    }
    samples: dict[str, list[tuple[float, float, float]]] = {tool: [] for tool in commands}
    for round_ in range(repeat + 1):
        order = list(commands) if round_ % 2 else list(reversed(commands))
        for tool in order:
            sample = run_measured(commands[tool], [outputs[tool],
                                                outputs[tool].with_suffix(".onnx.data")])
            if round_:
                samples[tool].append(sample)
                print(f"round {round_}: {tool} {sample[0]:.2f} s wall, {sample[1]:.2f} s CPU, "
                      f"{sample[2]:.0f} MB (load average {os.getloadavg()[0]:.1f})",
                      file=sys.stderr, flush=True)
    ours, theirs = samples["wnconvert"], samples["hand-written"]
    wall_ratios = [a[0] / b[0] for a, b in zip(ours, theirs, strict=True)]
    cpu_ratios = [a[1] / b[1] for a, b in zip(ours, theirs, strict=True)]
    rows: dict[str, object] = {}
    print("| | wall s min / median / max | CPU s median | peak RSS |")
    print("| --- | ---: | ---: | ---: |")
    for tool, values in samples.items():
        low, mid, high = spread([wall for wall, _, _ in values])
        cpu = spread([c for _, c, _ in values])[1]
        rss = round(max(r for _, _, r in values))
        rows[tool] = {"min_s": round(low, 2), "median_s": round(mid, 2), "max_s": round(high, 2),
                      "median_cpu_s": round(cpu, 2), "peak_rss_mb": rss}
        print(f"| {tool} | {low:.2f} / {mid:.2f} / {high:.2f} | {cpu:.2f} | {rss} MB |")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[1]:.1f} over the last 5 "
          "minutes")
    w_low, w_mid, w_high = spread(wall_ratios)
    c_low, c_mid, c_high = spread(cpu_ratios)
    print(f"wnconvert / hand-written, round by round (min / median / max): wall {w_low:.2f} / "
          f"{w_mid:.2f} / {w_high:.2f}, CPU {c_low:.2f} / {c_mid:.2f} / {c_high:.2f} "
          f"(goal <= {GOAL}: {'met' if w_mid <= GOAL else 'MISSED'} at the median wall ratio)")
    median = spread([w for w, _, _ in ours])[1]
    print(f"README row: | `wnconvert fold CKPT --to onnx` (verified) | {median:.1f} s: "
          f"{w_low:.2f}x / {w_mid:.2f}x / {w_high:.2f}x the time, CPU {c_mid:.2f}x "
          f"(SpeechT5 HiFi-GAN, {repeat} interleaved rounds; goal <= {GOAL}) | hand-written "
          "export + one ORT and one PyTorch run |")
    return {"cpus": os.cpu_count(), "rounds": repeat, **rows, "wall_ratios": wall_ratios,
            "cpu_ratios": cpu_ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stages", action="store_true",
                        help="also time each stage in this process (fixture and SpeechT5)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="wnconvert-bench-") as tmp:
        folder = Path(tmp)
        results["compare"] = compare(folder, args.repeat)
        if args.stages:
            for name, case in CASES.items():
                checkpoint = case["checkpoint"] or folder / "speecht5.safetensors"
                out = folder / f"{name}.onnx"
                best: dict[str, float] = {}
                for _ in range(args.repeat):
                    for stage, seconds in stages(case, checkpoint, out).items():
                        best[stage] = min(best.get(stage, float("inf")), seconds)
                results[name] = {f"{k}_s": round(v, 2) for k, v in best.items()}
                print(f"{name:9s} " + ", ".join(f"{k} {v:.2f} s" for k, v in best.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.chdir(REPO)  # --model paths are relative to the repository, as in the README
    main()
