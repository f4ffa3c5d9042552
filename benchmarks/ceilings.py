"""What this CPU can do at best: GEMM throughput in fp32, int8 and bf16, for the shapes BERT runs.

    python -m benchmarks.ceilings [--threads 2] [--repeats 20]

Times single-GEMM graphs, interleaved round by round, at bert-base's feed-forward shape (1024 tokens × 768 → 3072)
and a large square one:

- ONNX Runtime fp32 ``MatMul``;
- ONNX Runtime int8 ``MatMulInteger`` (u8 activations × s8 weights, what dynamic quantization emits) and
  ``DynamicQuantizeMatMul`` (the fused op ONNX Runtime runs for it, quantization of the activations included);
  without VNNI these run the u8 × s8 kernels that clip full-range 8-bit products (their speed, not exact results);
- the per-token int8 path our int8 export builds (:func:`bert_onnx.export.int8.quantize_per_row` applied to one
  MatMul: per-row absmax, ``QuantizeLinear`` with a scale per row, ``MatMulIntegerToFloat``, the row-scale ``Mul``),
  once for each weight encoding an int8 export tries on this CPU (s8 with VNNI; without VNNI 7-bit s8, then u8:
  :func:`bert_onnx.machine.int8_weight_encodings`);
- OpenVINO fp32 and bf16: one ``MatMul`` graph compiled with ``INFERENCE_PRECISION_HINT`` f32 or bf16 (bf16 where
  OpenVINO reports BF16). OpenVINO runs bf16 GEMM on AMX tiles where the CPU has them (``amx_bf16``), on
  AVX512_BF16 otherwise; the results record which of those flags ``/proc/cpuinfo`` shows.

Without VNNI the int8 kernels fall back to AVX2 and the int8 ceiling drops; the machine description in the results
lists the instruction sets the CPU exposes.

A second table bounds one short text. At 1 × 7 (the seed's sentence) each call multiplies 7 rows by every linear
layer's weights once, so it is bound by reading the weights, not by arithmetic. One graph holds bert-base's 48
weight GEMMs (12 layers of query-key-value 768 → 2304, attention output 768 → 768, feed-forward 768 → 3072 and
3072 → 768), independent of each other, at M = 7: fp32 ``MatMul`` (340 MB of weights), int8 ``MatMulInteger`` and
``MatMulIntegerToFloat`` (the op the int8 export runs, with per-column scales; 85 MB) and OpenVINO's ``MatMul`` in
fp32 and bf16 (170 MB). A model's call cannot run faster than its GEMMs alone, so these are floors for ``int8``,
``opt-int8`` and OpenVINO at 1 × 7; the weights' GB/s says how close each kernel streams to the memory. Each
measurement repeats one kernel's call for at least ``--min-seconds`` (as ``benchmarks.targets`` does), as a server
answering short queries does: what the weights leave in the last-level cache between calls counts, as it would
there.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import Column
from benchmarks.results_io import cpu_flags
from bert_onnx import machine, timing

SHAPES = {"bert FFN 1024×768·768×3072": (1024, 768, 3072), "square 2048": (2048, 2048, 2048)}
STREAM_ROWS = 7  # tokens of one short text: 'I love Korea' padded to 7
STREAM_LAYERS = 12
STREAM_GEMMS = ((768, 2304), (768, 768), (768, 3072), (3072, 768))  # one bert-base layer's weights, (K, N)
REFERENCE = "fp32 MatMul"
KERNEL_FLAGS = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
COLUMNS = [
    Column("kernel", "kernel"),
    Column("engine", "engine"),
    Column("shape", "shape"),
    Column("median ms", "median_ms", ".2f"),
    Column("GFLOP/s or GOP/s", "g_ops_per_s", ".0f"),
    Column(f"× {REFERENCE}", "x_fp32_matmul", ".2f"),
]


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], initializers: list[Any]) -> Any:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "ceiling", inputs, outputs, initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    return onnx.shape_inference.infer_shapes(model)


def _graph(op: str, m: int, k: int, n: int, weight: np.ndarray) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    initializers = [numpy_helper.from_array(weight, "B")]
    if op == "MatMul":
        a_type, node = TensorProto.FLOAT, helper.make_node("MatMul", ["A", "B"], ["Y"], name="MatMul")
        y_type = TensorProto.FLOAT
    elif op == "MatMulInteger":
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
    else:  # DynamicQuantizeMatMul: fp32 in, fp32 out, per-column weight scales
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
        initializers.append(numpy_helper.from_array(np.full((n,), 0.01, np.float32), "scale"))
        node = helper.make_node("DynamicQuantizeMatMul", ["A", "B", "scale"], ["Y"], domain="com.microsoft")
    inputs = [helper.make_tensor_value_info("A", a_type, [m, k])]
    return _model([node], inputs, [helper.make_tensor_value_info("Y", y_type, [m, n])], initializers)


def _per_token_graph(m: int, k: int, n: int, weight: np.ndarray, weights: str) -> Any:
    """One float MatMul turned into the per-token int8 subgraph by the export's own function, with the export's
    recipe (asymmetric rows and columns: bert_onnx.export.variants.build_int8) and ``weights``' encoding."""
    from bert_onnx.export.int8 import quantize_per_row

    graph = _graph("MatMul", m, k, n, weight)
    return quantize_per_row(graph, weights=weights, asymmetric=True)


def _onnxruntime(model: Any, threads: int, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)


def _openvino(model: Any, precision: str, threads: int, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    """``model`` compiled by OpenVINO at ``precision`` (refused if OpenVINO compiles another), run on ``feeds``."""
    import onnx
    import openvino

    core = openvino.Core()
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, str(Path(tmp) / "matmul.onnx"))
        compiled = core.compile_model(core.read_model(str(Path(tmp) / "matmul.onnx")), "CPU", config)
    effective = compiled.get_property("INFERENCE_PRECISION_HINT")
    effective = effective.to_string() if hasattr(effective, "to_string") else str(effective)
    if effective != precision:  # OpenVINO compiles f32 where it cannot do bf16: that is not a bf16 ceiling
        raise RuntimeError(f"asked OpenVINO for {precision}, it compiled {effective}")
    request = compiled.create_infer_request()
    return lambda: request.infer(feeds, share_inputs=True, share_outputs=True)


def bf16_units() -> str:
    """Which bf16 GEMM units the CPU shows: AMX tiles, AVX512_BF16, or none."""
    flags = cpu_flags()
    return "AMX" if "amx_bf16" in flags else "AVX512_BF16" if "avx512_bf16" in flags else "none"


def kernels(m: int, k: int, n: int, threads: int, rng: np.random.Generator) -> dict[str, tuple[str, Callable]]:
    """Every kernel at one shape: name -> (engine, a call running it once)."""
    float_weight = rng.standard_normal((k, n), dtype=np.float32)
    int8_weight = rng.integers(-127, 128, (k, n), dtype=np.int8)
    float_activation = rng.standard_normal((m, k), np.float32)
    found: dict[str, tuple[str, Callable]] = {
        REFERENCE: (
            "onnxruntime",
            _onnxruntime(_graph("MatMul", m, k, n, float_weight), threads, {"A": float_activation}),
        ),
        "int8 MatMulInteger u8×s8": (
            "onnxruntime",
            _onnxruntime(
                _graph("MatMulInteger", m, k, n, int8_weight),
                threads,
                {"A": rng.integers(0, 256, (m, k), dtype=np.uint8)},
            ),
        ),
        "int8 DynamicQuantizeMatMul": (
            "onnxruntime",
            _onnxruntime(_graph("DynamicQuantizeMatMul", m, k, n, int8_weight), threads, {"A": float_activation}),
        ),
    }
    for weights in machine.int8_weight_encodings():
        found[f"int8 per-token (export's subgraph, {weights} weights)"] = (
            "onnxruntime",
            _onnxruntime(_per_token_graph(m, k, n, float_weight, weights), threads, {"A": float_activation}),
        )
    hints = {"fp32": "f32", "bf16": "bf16"}
    for precision in harness.openvino_precisions():
        units = f", {bf16_units()}" if precision == "bf16" else ""
        model = _graph("MatMul", m, k, n, float_weight)
        found[f"{precision} MatMul (OpenVINO{units})"] = (
            "openvino",
            _openvino(model, hints[precision], threads, {"A": float_activation}),
        )
    return found


STREAM_COLUMNS = [
    Column("kernel", "kernel"),
    Column("engine", "engine"),
    Column("weights MB", "weight_mb", ".0f"),
    Column("median ms", "median_ms", ".2f"),
    Column("weights GB/s", "weight_gb_per_s", ".1f"),
    Column(f"× {REFERENCE}", "x_fp32_matmul", ".2f"),
]


def _stream_graph(op: str, weights: list[np.ndarray]) -> Any:
    """Every weight's GEMM once, each reading ``A768`` or ``A3072`` by its K: outputs ``Y0`` ... ``Y47``."""
    from onnx import TensorProto, helper, numpy_helper

    a_type = TensorProto.FLOAT if op == "MatMul" else TensorProto.UINT8
    y_type = TensorProto.INT32 if op == "MatMulInteger" else TensorProto.FLOAT
    nodes, outputs, initializers = [], [], []
    for index, weight in enumerate(weights):
        k, n = weight.shape
        inputs = [f"A{k}", f"W{index}"]
        initializers.append(numpy_helper.from_array(weight, f"W{index}"))
        if op == "MatMulIntegerToFloat":  # a_scale, b_scale (per column), a_zero_point: as the int8 export has them
            initializers.append(numpy_helper.from_array(np.full((n,), 1e-3, np.float32), f"S{index}"))
            inputs += ["one", f"S{index}", "zero_point"]
        nodes.append(
            helper.make_node(op, inputs, [f"Y{index}"], domain="com.microsoft" if op.endswith("ToFloat") else "")
        )
        outputs.append(helper.make_tensor_value_info(f"Y{index}", y_type, [STREAM_ROWS, n]))
    if op == "MatMulIntegerToFloat":
        initializers += [
            numpy_helper.from_array(np.array(1, np.float32), "one"),
            numpy_helper.from_array(np.array(0, np.uint8), "zero_point"),
        ]
    inputs = [helper.make_tensor_value_info(f"A{k}", a_type, [STREAM_ROWS, k]) for k in (768, 3072)]
    return _model(nodes, inputs, outputs, initializers)


def stream_kernels(threads: int, rng: np.random.Generator) -> dict[str, tuple[str, int, Callable]]:
    """bert-base's weights at 1 × 7, per kernel: name -> (engine, bytes of weights read per call, a call)."""
    shapes = [shape for _ in range(STREAM_LAYERS) for shape in STREAM_GEMMS]
    float_weights = [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]
    int8_weights = [rng.integers(-127, 128, shape, dtype=np.int8) for shape in shapes]
    parameters = sum(k * n for k, n in shapes)
    float_feeds = {f"A{k}": rng.standard_normal((STREAM_ROWS, k), np.float32) for k in (768, 3072)}
    int8_feeds = {f"A{k}": rng.integers(0, 256, (STREAM_ROWS, k), dtype=np.uint8) for k in (768, 3072)}

    found: dict[str, tuple[str, int, Callable]] = {
        REFERENCE: (
            "onnxruntime",
            4 * parameters,
            _onnxruntime(_stream_graph("MatMul", float_weights), threads, float_feeds),
        ),
        "int8 MatMulInteger u8×s8": (
            "onnxruntime",
            parameters,
            _onnxruntime(_stream_graph("MatMulInteger", int8_weights), threads, int8_feeds),
        ),
        "int8 MatMulIntegerToFloat (the int8 export's op)": (
            "onnxruntime",
            parameters,
            _onnxruntime(_stream_graph("MatMulIntegerToFloat", int8_weights), threads, int8_feeds),
        ),
    }
    hints = {"fp32": ("f32", 4), "bf16": ("bf16", 2)}
    for precision in harness.openvino_precisions():
        hint, size = hints[precision]
        units = f", {bf16_units()}" if precision == "bf16" else ""
        call = _openvino(_stream_graph("MatMul", float_weights), hint, threads, float_feeds)
        found[f"{precision} MatMul (OpenVINO{units})"] = ("openvino", size * parameters, call)
    return found


def run_stream(threads: int, repeats: int, warmup: int, min_seconds: float) -> list[dict[str, Any]]:
    found = stream_kernels(threads, np.random.default_rng(1))
    calls = {name: call for name, (_, _, call) in found.items()}
    timings = timing.compare(calls, repeats, warmup=max(warmup, 1), min_seconds=min_seconds)
    rows = []
    for name, measured in timings.items():
        engine, weight_bytes, _ = found[name]
        row = {
            "kernel": name,
            "engine": engine,
            "rows": STREAM_ROWS,
            "threads": threads,
            "weight_mb": weight_bytes / 1e6,
        }
        row.update(harness.timing_row(measured))
        row["weight_gb_per_s"] = weight_bytes / measured.median / 1e9
        row["x_fp32_matmul"] = harness.ratio(timings, name, REFERENCE)
        rows.append(row)
    harness.note(f"bert-base's weights at 1 × {STREAM_ROWS}: {len(timings)} kernels, {repeats} rounds")
    return rows


def run(threads: int, repeats: int, warmup: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows = []
    for label, (m, k, n) in SHAPES.items():
        found = kernels(m, k, n, threads, rng)
        timings = timing.compare({name: call for name, (_, call) in found.items()}, repeats, warmup=warmup)
        for name, measured in timings.items():
            row = {"kernel": name, "engine": found[name][0], "shape": label, "threads": threads}
            row.update(harness.timing_row(measured))
            row["g_ops_per_s"] = 2 * m * k * n / measured.median / 1e9
            row["x_fp32_matmul"] = harness.ratio(timings, name, REFERENCE)
            rows.append(row)
        harness.note(f"{label}: {len(timings)} kernels, {repeats} rounds")
    return rows


def main() -> None:
    parser = harness.arguments(__doc__, model_dir=None, repeats=20, label=False)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.2, help="shortest measurement at 1 × 7 (default: 0.2 s)")
    args = parser.parse_args()
    rows = run(args.threads, args.repeats, args.warmup)
    stream = run_stream(args.threads, args.repeats, args.warmup, args.min_seconds)
    flags = {flag: flag in cpu_flags() for flag in KERNEL_FLAGS}
    label = (
        f"GEMM ceilings, ONNX Runtime and OpenVINO on the CPU, {args.threads} threads, {args.repeats} interleaved "
        f"rounds; bf16 units: {bf16_units()}; CPU flags: {', '.join(f for f, shown in flags.items() if shown)}"
    )
    result = {"bf16_units": bf16_units(), "cpu_flags": flags, "rows": rows, "stream_rows": stream}
    markdown = (
        f"{harness.table(rows, COLUMNS)}\n\nOne short text: bert-base's 48 weight GEMMs at 1 × {STREAM_ROWS}, "
        f"each weight read once per call\n\n{harness.table(stream, STREAM_COLUMNS)}"
    )
    harness.write(args.out, "ceilings", result, markdown, label)


if __name__ == "__main__":
    main()
