"""How long ``wnconvert fold CKPT --to onnx`` (export + verification) takes, and where the time
goes: load (checkpoint + building the reference and the plain module), export (torch.onnx),
ORT session (creating a CPU session for the exported model) and verification (reference and
candidate runs and the comparison; it creates its own session too).

Two models: the shipped tiny fixture, and transformers' SpeechT5 HiFi-GAN at its default size
(12.7 M parameters, random weights from its config; needs ``pip install transformers``, the
``bench`` extra). Each stage is timed in this process with the library's own functions, and the
whole command once more in a fresh process (start-up and imports included, as a user sees it).

    python benchmarks/bench_fold_to_onnx.py [--repeat N] [--only fixture|speecht5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from measure import run_measured  # noqa: E402

CASES = {
    "fixture": {
        "checkpoint": REPO / "fixtures" / "tiny_hifigan_parametrize.pt",
        "model": "fixtures/models.py:build_generator",
        "kwargs": {"weight_norm": "none"},
        "input": "1x16x64",
        "target_s": 10.0,
    },
    "speecht5": {
        "checkpoint": None,  # written by weight_normed_state_dict()
        "model": "benchmarks/speecht5_model.py:build_speecht5_hifigan",
        "kwargs": {},
        "input": "1x100x80",
        "target_s": 30.0,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", choices=sorted(CASES))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="wnconvert-bench-") as tmp:
        folder = Path(tmp)
        for name, case in CASES.items():
            if args.only and name != args.only:
                continue
            checkpoint = case["checkpoint"]
            if checkpoint is None:
                try:
                    from safetensors.torch import save_file
                    from speecht5_model import weight_normed_state_dict
                except ImportError:
                    print(f"{name}: skipped (pip install transformers)", file=sys.stderr)
                    continue
                checkpoint = folder / f"{name}.safetensors"
                save_file(weight_normed_state_dict(), str(checkpoint))
            out = folder / f"{name}.onnx"
            best_stages: dict[str, float] = {}
            best_wall = float("inf")
            for _ in range(args.repeat):
                for stage, seconds in stages(case, checkpoint, out).items():
                    best_stages[stage] = min(best_stages.get(stage, float("inf")), seconds)
                cmd = [sys.executable, "-m", "wnconvert", "fold", str(checkpoint), "--to", "onnx",
                       "--model", case["model"], "--model-kwargs", json.dumps(case["kwargs"]),
                       "--input", case["input"], "--provider", "cpu", "-o", str(out),
                       "--force"]
                wall, rss = run_measured(cmd, outputs=[out])
                best_wall = min(best_wall, wall)
            results[name] = {"cli_wall_s": round(best_wall, 2), "peak_rss_mb": round(rss),
                             "target_s": case["target_s"],
                             **{f"{k}_s": round(v, 2) for k, v in best_stages.items()}}
            row = results[name]
            print(f"{name:9s} CLI {row['cli_wall_s']:6.2f} s (target < {case['target_s']:.0f} s),"
                  f" peak RSS {row['peak_rss_mb']} MB | load {row['load_s']:.2f} s, export "
                  f"{row['export_s']:.2f} s, ORT session {row['ort_session_s']:.2f} s, verify "
                  f"{row['verify_s']:.2f} s")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    import os

    os.chdir(REPO)  # --model paths are relative to the repository, as in the README
    main()
