"""What this CPU can do at best: ONNX Runtime GEMM throughput in fp32 and int8, for the shapes BERT runs.

    python -m benchmarks.ceilings [--threads 2] [--repeats 20]

Times single-node graphs: fp32 ``MatMul``, int8 ``MatMulInteger`` (u8 activations × s8 weights, what dynamic
quantization emits) and ``DynamicQuantizeMatMul`` (the fused op ONNX Runtime runs for it, quantization of the
activations included), at bert-base's feed-forward shape (1024 tokens × 768 → 3072) and a large square one. The
machine description in the results lists the instruction sets the CPU exposes: without VNNI the int8 kernels fall
back to AVX2 and the int8 ceiling drops.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results_io import write_results

SHAPES = {"bert FFN 1024×768·768×3072": (1024, 768, 3072), "square 2048": (2048, 2048, 2048)}


def _graph(op: str, m: int, k: int, n: int, weight: np.ndarray) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    initializers = [numpy_helper.from_array(weight, "B")]
    if op == "MatMul":
        a_type, node = TensorProto.FLOAT, helper.make_node("MatMul", ["A", "B"], ["Y"])
        y_type = TensorProto.FLOAT
    elif op == "MatMulInteger":
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
    else:  # DynamicQuantizeMatMul: fp32 in, fp32 out, per-column weight scales
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
        initializers.append(numpy_helper.from_array(np.full((n,), 0.01, np.float32), "scale"))
        node = helper.make_node("DynamicQuantizeMatMul", ["A", "B", "scale"], ["Y"], domain="com.microsoft")
    graph = helper.make_graph(
        [node],
        op,
        [helper.make_tensor_value_info("A", a_type, [m, k])],
        [helper.make_tensor_value_info("Y", y_type, [m, n])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    return bytes(onnx.shape_inference.infer_shapes(model).SerializeToString())


def run(threads: int, repeats: int) -> list[dict[str, Any]]:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    rows = []
    for label, (m, k, n) in SHAPES.items():
        cases: dict[str, tuple[np.ndarray, np.ndarray]] = {
            "fp32 MatMul": (rng.standard_normal((k, n), dtype=np.float32), rng.standard_normal((m, k), np.float32)),
            "int8 MatMulInteger u8×s8": (
                rng.integers(-127, 128, (k, n), dtype=np.int8),
                rng.integers(0, 256, (m, k), dtype=np.uint8),
            ),
            "int8 DynamicQuantizeMatMul": (
                rng.integers(-127, 128, (k, n), dtype=np.int8),
                rng.standard_normal((m, k), np.float32),
            ),
        }
        for name, (weight, activation) in cases.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            op = name.split()[1]
            session = ort.InferenceSession(_graph(op, m, k, n, weight), options, providers=["CPUExecutionProvider"])
            for _ in range(3):
                session.run(None, {"A": activation})
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                session.run(None, {"A": activation})
                samples.append(time.perf_counter() - started)
            median = statistics.median(samples)
            rows.append(
                {
                    "kernel": name,
                    "shape": label,
                    "threads": threads,
                    "median_ms": median * 1e3,
                    "g_ops_per_s": 2 * m * k * n / median / 1e9,
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| kernel | shape | median ms | GFLOP/s or GOP/s |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['shape']} | {r['median_ms']:.2f} | {r['g_ops_per_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = run(args.threads, args.repeats)
    from benchmarks.results_io import machine

    label = f"GEMM ceilings, ONNX Runtime CPU, {args.threads} threads, ISA: {', '.join(machine()['isa'])}"
    write_results(args.out, "ceilings", {"rows": rows}, markdown(rows), label)


if __name__ == "__main__":
    main()
