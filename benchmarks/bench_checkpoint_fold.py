"""Benchmark: `wnconvert fold` on a float32 safetensors checkpoint (parametrize keys), ~1 GB.

Compares, each in a fresh subprocess (so start-up and imports count, as for a user):
  cp          `cp in.safetensors out.safetensors`: the I/O floor (issue 22: fold <= 1.0x cp)
  wnconvert   `wnconvert fold in.safetensors -o out.safetensors`
  API         `wnconvert.fold_checkpoint(in, out)` from Python (the library's own job)
  start-up    `wnconvert --version`: Python start-up and the CLI's imports, a floor of its own
  (a)         safetensors `load_file` + `save_file` of the same file (no arithmetic at all)
  (b)         a plain PyTorch loop: load_file, `torch._weight_norm` per pair, save_file
(--no-baselines leaves out (a) and (b), which hold the whole file in memory.)

Reports wall time (min / median / max), CPU seconds (user + system) and peak RSS (from the
kernel, via os.wait4) of each over --repeat rounds after one warm-up run each (so the input is
in the page cache for everybody, as it is for cp, and the bytecode of every module is cached,
as it is after `pip install`: the children run without PYTHONDONTWRITEBYTECODE, with their
cache in the work folder). The runs are interleaved round-robin, and each run's wall time and
CPU seconds are also divided by cp's in the same round: the ratio is what holds on a shared,
noisy machine (CPU seconds do not depend on the load). Every run starts after `sync` with its
output deleted, so no run pays for another's write-back. The last line is the README's
Performance row.
Targets (issue 22): wnconvert fold <= 1.0x cp, peak RSS <= 100 MB, on 1 GB and 4 GB.

    python benchmarks/bench_checkpoint_fold.py [--size-gb 1.0] [--repeat 5] [--no-baselines]
        [--compare-tree OLDER_CHECKOUT]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import Measured, run_measured

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


def child_environment(work: Path) -> dict[str, str]:
    """The children's environment: bytecode written and read (in ``work/pycache``).

    A development shell often sets PYTHONDONTWRITEBYTECODE, which makes every run compile
    wnconvert's modules again (0.2 CPU s here, a third of the start-up); a user's installed
    package has its bytecode cached, and so do the runs measured here after the warm-up.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def run(cmd: list[str], output: Path | None,
        env: dict[str, str] | None = None) -> Measured:
    """One child's wall seconds, CPU seconds and peak RSS: on a loaded machine the wall time
    of a job that keeps two cores busy suffers more than that of a one-core ``cp``, and the CPU
    seconds show the work each one does whatever the load."""
    return run_measured(cmd, [output] if output is not None else [], env)


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip (a) and (b), which hold the whole file in memory (for --size-gb 4)",
    )
    parser.add_argument(
        "--compare-tree",
        type=Path,
        help="also run `python -m wnconvert fold` from this source tree (an older checkout: "
        "its PYTHONPATH), interleaved with the others, to measure a change in the same rounds",
    )
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
        # name -> (command, output file)
        cases: dict[str, tuple[list[str], Path | None]] = {
            "cp (floor)": (["cp", str(src), str(work / "cp.safetensors")], work / "cp.safetensors"),
            "wnconvert fold": (
                [wnconvert, "fold", str(src), "-o", str(work / "w.safetensors"), "--force",
                 "--quiet"],
                work / "w.safetensors",
            ),
            "wnconvert.fold_checkpoint": (
                [sys.executable, "-c", API_FOLD, str(src), str(work / "api.safetensors")],
                work / "api.safetensors",
            ),
            "start-up (wnconvert --version)": ([wnconvert, "--version"], None),
        }
        envs: dict[str, dict[str, str]] = {}
        if args.compare_tree:
            older = f"wnconvert fold ({args.compare_tree.name})"
            cases[older] = (
                [sys.executable, "-m", "wnconvert", "fold", str(src), "-o",
                 str(work / "old.safetensors"), "--force", "--quiet"],
                work / "old.safetensors",
            )
            envs[older] = {"PYTHONPATH": str(args.compare_tree.resolve())}
        if not args.no_baselines:
            cases["(a) safetensors load+save"] = (
                [sys.executable, "-c", BASELINE_A, str(src), str(work / "a.safetensors")],
                work / "a.safetensors",
            )
            cases["(b) torch._weight_norm loop"] = (
                [sys.executable, "-c", BASELINE_B, str(src), str(work / "b.safetensors")],
                work / "b.safetensors",
            )
        env = child_environment(work)
        for name, (cmd, output) in cases.items():
            run(cmd, output, env | envs.get(name, {}))  # warm-up: page cache, bytecode
            if output is not None:
                output.unlink()
        # Round-robin (cp, w, api, ..., cp, w, api, ...) rather than all runs of one case in a
        # row: on a shared machine a noisy minute then hurts every case alike, and the ratio
        # of each round compares runs made seconds apart. Each output is deleted once measured
        # (the last round's folds are kept for the checks below): five 4 GB outputs in the page
        # cache of a 24 GB machine would evict the input, and every run would read the disk.
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}
        for round_number in range(args.repeat):
            for name, (cmd, output) in cases.items():
                samples[name].append(run(cmd, output, env | envs.get(name, {})))
                last = round_number == args.repeat - 1
                if output is not None and (not last or name == "cp (floor)"):
                    output.unlink()
        results = {
            name: {
                "seconds": spread([t for t, _, _ in runs]),
                "cpu_seconds": spread([c for _, c, _ in runs]),
                "peak_rss_mb": max(r for _, _, r in runs),
            }
            for name, runs in samples.items()
        }
        floor = samples["cp (floor)"]
        folds = ["wnconvert fold", "wnconvert.fold_checkpoint", *envs]
        ratios = {
            name: spread([t / c for (t, _, _), (c, _, _) in zip(samples[name], floor, strict=True)])
            for name in folds
        }
        cpu_ratios = {
            name: spread([t / max(c, 0.01)
                          for (_, t, _), (_, c, _) in zip(samples[name], floor, strict=True)])
            for name in folds
        }
        ulps = _check_same(work, with_torch=not args.no_baselines)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            for name in ("cp", "w", "api", "old", "a", "b"):
                (work / f"{name}.safetensors").unlink(missing_ok=True)

    w, api = results["wnconvert fold"], results["wnconvert.fold_checkpoint"]
    summary: dict[str, object] = {
        "checkpoint_mb": round(size / 1e6, 1),
        "cpus": os.cpu_count(),
        "rounds": args.repeat,
        "results": results,
        "ratio_vs_cp_per_round": ratios,
        "cpu_ratio_vs_cp_per_round": cpu_ratios,
        "max_ulp_vs_float64_fold": ulps,
        "targets_met": {
            "wnconvert fold <= 1.0x cp (median of the per-round ratios)":
                ratios["wnconvert fold"]["median"] <= 1.0,
            "peak RSS <= 100 MB": w["peak_rss_mb"] <= 100,
            "API peak RSS <= 100 MB": api["peak_rss_mb"] <= 100,
        },
    }
    if not args.no_baselines:
        a, b = results["(a) safetensors load+save"], results["(b) torch._weight_norm loop"]
        summary["wnconvert_vs_a"] = round(w["seconds"]["median"] / a["seconds"]["median"], 3)
        summary["wnconvert_vs_b"] = round(w["seconds"]["median"] / b["seconds"]["median"], 3)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"checkpoint: {summary['checkpoint_mb']} MB float32, {os.cpu_count()} CPUs, "
        f"{args.repeat} interleaved rounds after a warm-up"
    )
    print(f"{'':32} {'min s':>7} {'median s':>9} {'max s':>7} {'CPU s (median)':>15} "
          f"{'peak RSS MB':>12}")
    for name, r in results.items():
        t = r["seconds"]
        print(f"{name:32} {t['min']:7.2f} {t['median']:9.2f} {t['max']:7.2f} "
              f"{r['cpu_seconds']['median']:15.2f} {r['peak_rss_mb']:12.0f}")
    print("ratio to cp in the same round (min / median / max), wall time | CPU seconds:")
    for name, ratio in ratios.items():
        cpu = cpu_ratios[name]
        print(f"  {name:30} {ratio['min']:.2f} / {ratio['median']:.2f} / {ratio['max']:.2f} | "
              f"{cpu['min']:.2f} / {cpu['median']:.2f} / {cpu['max']:.2f}")
    if not args.no_baselines:
        print(f"wnconvert / (a) = {summary['wnconvert_vs_a']}, "
              f"wnconvert / (b) = {summary['wnconvert_vs_b']} (medians)")
    for older in (n for n in ratios if n.startswith("wnconvert fold (")):
        paired = list(zip(samples["wnconvert fold"], samples[older], strict=True))
        wall = spread([a[0] / b[0] for a, b in paired])
        cpu = spread([a[1] / b[1] for a, b in paired])
        print(f"wnconvert fold / {older}, per round (min / median / max): wall "
              f"{wall['min']:.2f} / {wall['median']:.2f} / {wall['max']:.2f}, CPU seconds "
              f"{cpu['min']:.2f} / {cpu['median']:.2f} / {cpu['max']:.2f}")
    print("max ulp vs an independent float64 fold: "
          + ", ".join(f"{k} {v:.0f}" for k, v in ulps.items()))
    for target, ok in summary["targets_met"].items():  # type: ignore[union-attr]
        print(f"  {'met' if ok else 'MISSED':6} {target}")
    print("README row:")
    print(readme_row(size, args.repeat, results, ratios, cpu_ratios))


def readme_row(size: int, rounds: int, results: dict[str, dict], ratios: dict[str, dict],
               cpu_ratios: dict[str, dict]) -> str:
    """The README Performance table's row for this run."""
    w, api, cp = (results[n] for n in ("wnconvert fold", "wnconvert.fold_checkpoint", "cp (floor)"))
    r, c, a = ratios["wnconvert fold"], cpu_ratios["wnconvert fold"], ratios[
        "wnconvert.fold_checkpoint"]
    return (
        f"| `wnconvert fold` of a {size / 1e9:.1f} GB safetensors checkpoint | "
        f"{w['seconds']['median']:.2f} s, {w['peak_rss_mb']:.0f} MB peak: "
        f"{r['min']:.2f}x / {r['median']:.2f}x / {r['max']:.2f}x the time of `cp` (min / median "
        f"/ max of {rounds} interleaved rounds; CPU seconds {c['median']:.2f}x; the library "
        f"call {a['median']:.2f}x) | `cp` of the same file "
        f"({cp['seconds']['median']:.2f} s, {cp['cpu_seconds']['median']:.2f} CPU s) |"
    )


def _check_same(work: Path, *, with_torch: bool) -> dict[str, float]:
    """wnconvert's output is within 1 ulp of an independent float64 fold (numpy); report how
    far the float32 torch loop strays from it (PyTorch folds in the tensor's own precision).
    Reads a few layers only, so a 4 GB run does not need 4 GB of memory here."""
    import numpy as np
    from safetensors import safe_open

    if not filecmp.cmp(work / "api.safetensors", work / "w.safetensors", shallow=False):
        raise SystemExit("wnconvert.fold_checkpoint and wnconvert fold wrote different files")
    older = work / "old.safetensors"
    if older.exists() and not filecmp.cmp(older, work / "w.safetensors", shallow=False):
        raise SystemExit("wnconvert fold and the --compare-tree one wrote different files")
    names = {"wnconvert": "w"} | ({"torch": "b"} if with_torch else {})
    worst = dict.fromkeys(names, 0.0)
    with safe_open(str(work / "in.safetensors"), "numpy") as src:
        bases = [k[: -len(".parametrizations.weight.original1")] for k in src.keys()
                 if k.endswith(".parametrizations.weight.original1")][:4]
        for base in bases:
            v = src.get_tensor(f"{base}.parametrizations.weight.original1").astype(np.float64)
            g = src.get_tensor(f"{base}.parametrizations.weight.original0").astype(np.float64)
            norm = np.sqrt((v * v).reshape(v.shape[0], -1).sum(axis=1)).reshape(g.shape)
            ref = (v * (g / norm)).astype(np.float32)
            spacing = np.spacing(np.abs(ref))
            for name, stem in names.items():
                with safe_open(str(work / f"{stem}.safetensors"), "numpy") as out:
                    got = out.get_tensor(f"{base}.weight").astype(np.float64)
                worst[name] = max(worst[name], float(np.max(np.abs(got - ref) / spacing)))
    if worst["wnconvert"] > 1:
        raise SystemExit(f"wnconvert is {worst['wnconvert']} ulp off the float64 fold")
    return worst


if __name__ == "__main__":
    main()
