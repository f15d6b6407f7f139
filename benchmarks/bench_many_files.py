"""`wnconvert check` of a 40-model zoo: one run over the folder against one run per model.

The models are small Conv stacks built with onnx.helper, half of them computing weight norm at
run time (g · v / ReduceL2(v), as torch.onnx.export writes it), so the folder run exits 1 like a
real zoo with a few stale exports. Runs are interleaved (one folder run, then the 40 single
runs, repeated) so that a slower moment of the machine hits both; each child is a fresh
``python -m wnconvert`` process, as a CI step would start.

    python benchmarks/bench_many_files.py [--models 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OK_CODES = (0, 1)  # clean / weight norm found: both are answers, not failures of the run


def _model(index: int, *, weight_norm: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(index)
    channels = 4 + index % 5
    nodes, inits = [], []
    x = "x"
    for layer in range(3):
        shape = (channels, 4 if layer == 0 else channels, 3)
        name = f"convs.{layer}.weight"
        if weight_norm:
            g = rng.uniform(0.5, 1.5, (channels, 1, 1)).astype(np.float32)
            v = rng.standard_normal(shape).astype(np.float32)
            g_name = f"convs.{layer}.parametrizations.weight.original0"
            v_name = f"convs.{layer}.parametrizations.weight.original1"
            inits += [numpy_helper.from_array(g, g_name), numpy_helper.from_array(v, v_name)]
            axes = f"axes_{layer}"
            inits.append(numpy_helper.from_array(np.array([1, 2], dtype=np.int64), axes))
            nodes += [
                helper.make_node("ReduceL2", [v_name, axes], [f"n{layer}"], keepdims=1),
                helper.make_node("Div", [v_name, f"n{layer}"], [f"d{layer}"]),
                helper.make_node("Mul", [f"d{layer}", g_name], [name]),
            ]
        else:
            inits.append(numpy_helper.from_array(
                rng.standard_normal(shape).astype(np.float32), name))
        out = "y" if layer == 2 else f"h{layer}"
        nodes.append(helper.make_node("Conv", [x, name], [out], pads=[1, 1]))
        x = out
    graph = helper.make_graph(
        nodes, f"zoo_{index}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def _run(args: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "wnconvert", *args], capture_output=True,
                          check=False)
    seconds = time.perf_counter() - start
    if proc.returncode not in OK_CODES:
        raise SystemExit(f"wnconvert {' '.join(args[:2])} exited {proc.returncode}: "
                         f"{proc.stderr.decode()[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        zoo = Path(tmp) / "zoo"
        zoo.mkdir()
        files = []
        for index in range(args.models):
            path = zoo / f"model_{index:02d}.onnx"
            onnx.save(_model(index, weight_norm=index % 2 == 1), str(path))
            files.append(path)
        _run(["check", str(zoo), "--quiet"])  # warm the page cache and .pyc files
        one_run, many_runs = [], []
        for _ in range(args.repeats):
            one_run.append(_run(["check", str(zoo), "--quiet"]))
            many_runs.append(sum(_run(["check", str(path), "--quiet"]) for path in files))

    def line(label: str, values: list[float]) -> str:
        return (f"{label:<32} min {min(values):6.2f} s  median {statistics.median(values):6.2f}"
                f" s  max {max(values):6.2f} s")

    print(f"{args.models} models, {args.repeats} repeats (interleaved)")
    print(line("wnconvert check DIR (1 run)", one_run))
    print(line(f"wnconvert check FILE ({args.models} runs)", many_runs))
    ratio = statistics.median(many_runs) / statistics.median(one_run)
    print(f"one run is {ratio:.0f}x faster (medians)")


if __name__ == "__main__":
    main()
