"""Benchmark: `wnconvert fold` on a ~1 GB float32 safetensors checkpoint (parametrize keys).

Compares, each in a fresh subprocess (so start-up and imports count, as for a user):
  wnconvert   `wnconvert fold in.safetensors -o out.safetensors`
  API         `wnconvert.fold_checkpoint(in, out)` from Python (the library's own job)
  (a)         safetensors `load_file` + `save_file` of the same file (no arithmetic at all)
  (b)         a plain PyTorch loop: load_file, `torch._weight_norm` per pair, save_file

Reports wall time and peak RSS (from the kernel, via os.wait4) of each, best of --repeat runs
after one warm-up run each (so the input is in the page cache for everybody); the runs are
interleaved round-robin so machine noise spreads over all cases. Targets (issue 2):
wnconvert <= 0.5x the time of (b), no slower than (a), peak RSS < 400 MB; the API within 1.5x
the CLI's time and under 200 MB (issue 17).

    python benchmarks/bench_checkpoint_fold.py [--size-gb 1.0] [--repeat 3] [--keep]
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

from measure import run_measured  # benchmarks/measure.py (same folder)

BASELINE_A = """
import sys
from safetensors.torch import load_file, save_file
save_file(load_file(sys.argv[1]), sys.argv[2])
"""

API_FOLD = """
import sys, wnconvert
wnconvert.fold_checkpoint(sys.argv[1], sys.argv[2], force=True)
"""

BASELINE_B = """
import sys, torch
from safetensors.torch import load_file, save_file
sd = load_file(sys.argv[1])
out = {}
for key, value in sd.items():
    if key.endswith(".parametrizations.weight.original0"):
        continue
    if key.endswith(".parametrizations.weight.original1"):
        base = key[: -len(".parametrizations.weight.original1")]
        g = sd[base + ".parametrizations.weight.original0"]
        out[base + ".weight"] = torch._weight_norm(value, g, 0)
    else:
        out[key] = value
save_file(out, sys.argv[2])
"""


def make_checkpoint(path: Path, size_gb: float) -> int:
    """Vocoder-like layers: Conv1d weights (out, in, k) with g of shape (out, 1, 1), plus biases."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    layer_bytes = 1024 * 1024 * 8 * 4  # 32 MiB per weight
    layers = max(1, round(size_gb * 1e9 / layer_bytes))
    tensors = {}
    for i in range(layers):
        v = rng.standard_normal((1024, 1024, 8), dtype=np.float32)
        tensors[f"blocks.{i}.conv.parametrizations.weight.original0"] = (
            rng.random((1024, 1, 1), dtype=np.float32) + 0.5
        )
        tensors[f"blocks.{i}.conv.parametrizations.weight.original1"] = v
        tensors[f"blocks.{i}.conv.bias"] = rng.standard_normal(1024, dtype=np.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path.stat().st_size


def run(cmd: list[str], output: Path) -> tuple[float, float]:
    return run_measured(cmd, [output])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--make", type=Path, help=argparse.SUPPRESS)  # internal: make the input
    args = parser.parse_args()
    if args.make:
        make_checkpoint(args.make, args.size_gb)
        return

    work = args.dir or Path(tempfile.mkdtemp(prefix="wnconvert-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "in.safetensors"
    try:
        # Made in a child so this process stays small (a fork would inherit its RSS).
        subprocess.run(
            [sys.executable, __file__, "--make", str(src), "--size-gb", str(args.size_gb)],
            check=True,
        )
        size = src.stat().st_size
        wnconvert = shutil.which("wnconvert") or str(Path(sys.executable).with_name("wnconvert"))
        cases = {
            "wnconvert fold": [
                wnconvert,
                "fold",
                str(src),
                "-o",
                str(work / "w.safetensors"),
                "--force",
                "--quiet",
            ],
            "wnconvert.fold_checkpoint": [
                sys.executable,
                "-c",
                API_FOLD,
                str(src),
                str(work / "api.safetensors"),
            ],
            "(a) safetensors load+save": [
                sys.executable,
                "-c",
                BASELINE_A,
                str(src),
                str(work / "a.safetensors"),
            ],
            "(b) torch._weight_norm loop": [
                sys.executable,
                "-c",
                BASELINE_B,
                str(src),
                str(work / "b.safetensors"),
            ],
        }
        outputs = {
            name: Path(cmd[-1] if "wnconvert" not in name else cmd[4])
            for name, cmd in cases.items()
        }
        for name, cmd in cases.items():
            run(cmd, outputs[name])  # warm-up: page cache, .pyc files
        # Round-robin (w, a, b, w, a, b, ...) rather than all runs of one case in a row: on a
        # shared machine a noisy minute then hurts every case alike instead of just one.
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, cmd in cases.items():
                samples[name].append(run(cmd, outputs[name]))
        results = {
            name: {"seconds": min(t for t, _ in runs), "peak_rss_mb": max(r for _, r in runs)}
            for name, runs in samples.items()
        }
        ulps = _check_same(work)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    w, api, a, b = (results[k] for k in cases)
    summary = {
        "checkpoint_mb": round(size / 1e6, 1),
        "cpus": os.cpu_count(),
        "results": results,
        "max_ulp_vs_float64_fold": ulps,
        "wnconvert_vs_b": round(w["seconds"] / b["seconds"], 3),
        "wnconvert_vs_a": round(w["seconds"] / a["seconds"], 3),
        "api_vs_cli": round(api["seconds"] / w["seconds"], 3),
        "targets_met": {
            "API time <= 1.5x CLI": api["seconds"] <= 1.5 * w["seconds"],
            "API peak RSS < 200 MB": api["peak_rss_mb"] < 200,
            "time <= 0.5x (b)": w["seconds"] <= 0.5 * b["seconds"],
            "time <= (a)": w["seconds"] <= a["seconds"],
            "peak RSS < 400 MB": w["peak_rss_mb"] < 400,
        },
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"checkpoint: {summary['checkpoint_mb']} MB float32, {os.cpu_count()} CPUs, "
        f"best of {args.repeat} interleaved runs after a warm-up"
    )
    print(f"{'':32} {'wall s':>8} {'peak RSS MB':>12}")
    for name, r in results.items():
        print(f"{name:32} {r['seconds']:8.2f} {r['peak_rss_mb']:12.0f}")
    print(
        f"wnconvert / (b) = {summary['wnconvert_vs_b']}, wnconvert / (a) = "
        f"{summary['wnconvert_vs_a']}, API / CLI = {summary['api_vs_cli']}"
    )
    print(
        f"max ulp vs an independent float64 fold: wnconvert {ulps['wnconvert']:.0f}, "
        f"torch loop {ulps['torch']:.0f}"
    )
    for target, ok in summary["targets_met"].items():
        print(f"  {'met' if ok else 'MISSED':6} {target}")


def _check_same(work: Path) -> dict[str, float]:
    """wnconvert's output is within 1 ulp of an independent float64 fold (numpy); report how
    far the float32 torch loop strays from it (PyTorch folds in the tensor's own precision)."""
    import numpy as np
    from safetensors.numpy import load_file

    api, cli = (work / "api.safetensors").read_bytes(), (work / "w.safetensors").read_bytes()
    if api != cli:
        raise SystemExit("wnconvert.fold_checkpoint and wnconvert fold wrote different files")
    src = load_file(str(work / "in.safetensors"))
    ours, theirs = load_file(str(work / "w.safetensors")), load_file(str(work / "b.safetensors"))
    assert ours.keys() == theirs.keys(), "different keys"
    worst = {"wnconvert": 0.0, "torch": 0.0}
    for key in [k for k in ours if k.endswith(".weight")][:4]:
        base = key[: -len(".weight")]
        v = src[f"{base}.parametrizations.weight.original1"].astype(np.float64)
        g = src[f"{base}.parametrizations.weight.original0"].astype(np.float64)
        norm = np.sqrt((v * v).reshape(v.shape[0], -1).sum(axis=1)).reshape(g.shape)
        ref = (v * (g / norm)).astype(np.float32)
        spacing = np.spacing(np.abs(ref))
        for name, out in (("wnconvert", ours[key]), ("torch", theirs[key])):
            ulps = float(np.max(np.abs(out.astype(np.float64) - ref) / spacing))
            worst[name] = max(worst[name], ulps)
    if worst["wnconvert"] > 1:
        raise SystemExit(f"wnconvert is {worst['wnconvert']} ulp off the float64 fold")
    return worst


if __name__ == "__main__":
    main()
