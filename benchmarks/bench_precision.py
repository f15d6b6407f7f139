"""Reduced precision, measured: transformers' SpeechT5 HiFi-GAN at its default size (12.7 M
parameters, random weights from its config, weight norm applied; nothing is downloaded)
exported with ``precision="fp32"``, ``"fp16"`` and ``"bf16"`` (where ONNX Runtime's CPU
provider runs it), each against the float32 PyTorch model with weight norm: file size, max
abs error, p99 abs error, SNR in dB, and export + verify time. onnxconverter-common's
``convert_float_to_float16`` on the float32 export is measured beside ours (how many weight
values it clamps, and the same error figures).

    python benchmarks/bench_precision.py [--input 1x100x80] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
MODEL = "benchmarks/speecht5_model.py:build_speecht5_hifigan"


def errors(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Max and 99th-percentile absolute error, and SNR (dB) of ``candidate`` against
    ``reference``, in float64."""
    c, r = candidate.astype(np.float64), reference.astype(np.float64)
    diff = np.abs(c - r)
    noise = float(np.sum(diff**2))
    snr = float("inf") if noise == 0 else 10 * np.log10(float(np.sum(r**2)) / noise)
    return {"max_abs": float(diff.max()), "p99_abs": float(np.percentile(diff, 99)),
            "snr_db": snr}


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    x = x.astype(np.float16) if feed.type == "tensor(float16)" else x
    return np.asarray(session.run(None, {feed.name: x})[0]).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="1x100x80")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import onnx
    import torch
    from speecht5_model import build_speecht5_hifigan, weight_normed_state_dict

    import wnconvert

    shape = tuple(int(d) for d in args.input.split("x"))
    state = weight_normed_state_dict()
    reference = build_speecht5_hifigan()
    reference.apply_weight_norm()
    reference.load_state_dict(state)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
    options = wnconvert.VerifyOptions(providers=("cpu",))
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="wnconvert-bench-") as tmp:
        folder = Path(tmp)
        for precision in ("fp32", "fp16", "bf16"):
            out = folder / f"{precision}.onnx"
            started = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    outcome = wnconvert.export_onnx(
                        state, out, model=MODEL, inputs=[wnconvert.InputSpec(shape)],
                        options=options, precision=precision)  # type: ignore[arg-type]
            except wnconvert.InputError as exc:
                rows[precision] = {"ran": False, "why": str(exc)}
                print(f"{precision}: not run: {exc}")
                continue
            seconds = time.perf_counter() - started
            converted = outcome.precision.to_dict() if outcome.precision else None
            rows[precision] = {"ran": True, "size_mb": out.stat().st_size / 1e6,
                               "export_verify_s": seconds, "passed": outcome.passed,
                               "verify_max_abs": _report_max_abs(outcome.report),
                               "underflow": converted["underflow"]["count"] if converted else 0,
                               "rounded_from_float64": (converted or {}).get(
                                   "rounded_from_float64", 0),
                               **errors(run_onnx(out, x), want)}
            print(precision, json.dumps(rows[precision]))
        # onnxconverter-common on the same float32 export.
        from onnxconverter_common import float16

        model = onnx.load(str(folder / "fp32.onnx"))
        weights = np.concatenate([onnx.numpy_helper.to_array(t).reshape(-1)
                                  for t in model.graph.initializer
                                  if t.data_type == onnx.TensorProto.FLOAT])
        magnitude = np.abs(weights[weights != 0])
        clamped = int(((magnitude < 1e-7) | (magnitude > 1e4)).sum())
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = float16.convert_float_to_float16(model, keep_io_types=True)
        convert_s = time.perf_counter() - started
        path = folder / "occ.onnx"
        onnx.save(theirs, str(path))
        rows["fp16 (onnxconverter-common)"] = {
            "ran": True, "size_mb": path.stat().st_size / 1e6, "convert_s": convert_s,
            "clamped": clamped, "float32_weights": int(weights.size),
            **errors(run_onnx(path, x), want)}
        print("onnxconverter-common", json.dumps(rows["fp16 (onnxconverter-common)"]))
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _report_max_abs(report: Any) -> float | None:
    if report is None:
        return None
    return max((output.first.max_abs for provider in report.providers
                for output in provider.outputs), default=None)


def table(rows: dict[str, dict[str, Any]]) -> str:
    """The README table (Markdown)."""
    lines = ["| precision | file size | max abs err | p99 abs err | SNR | export + verify |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if not row["ran"]:
            lines.append(f"| {name} | not run on CPU: {row['why']} | | | | |")
            continue
        took = (f"{row['export_verify_s']:.1f} s ({'passed' if row['passed'] else 'failed'})"
                if "export_verify_s" in row else
                f"convert {row['convert_s']:.1f} s; {row['clamped']} values clamped")
        lines.append(f"| {name} | {row['size_mb']:.1f} MB | {row['max_abs']:.2e} | "
                     f"{row['p99_abs']:.2e} | {row['snr_db']:.1f} dB | {took} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import os

    os.chdir(REPO)  # --model paths are relative to the repository, as in the README
    main()
