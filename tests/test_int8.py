"""Per-token int8 (bert_onnx.export.int8): the graph computes what its docstring says, row by row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import checkpoint_path
from onnx import TensorProto, helper, numpy_helper

from bert_onnx import interface, machine
from bert_onnx.export import export_model
from bert_onnx.export.int8 import (
    WEIGHT_ENCODINGS,
    quantizable_matmuls,
    quantize_asymmetric_weight,
    quantize_per_row,
    quantize_weight,
)

pytestmark = pytest.mark.fast  # the edit-loop tier: tiny checkpoint, in process

# The encodings whose integer products are exact on this CPU: s8 only with VNNI (see test_s8_clips_only_without_vnni).
EXACT_HERE = tuple(w for w in WEIGHT_ENCODINGS if w != "s8" or machine.has_vnni())
HERE = machine.int8_weight_encodings()[0]  # what an int8 export tries first on this CPU


def _two_matmuls(k: int = 48, n: int = 24, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """x (B, T, K) @ w1 and x @ w2: two constant-weight MatMuls reading one input (like query and key)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(k, n)).astype(np.float32)
    w2 = rng.normal(size=(k, 2 * n)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["y1"], name="first"),
            helper.make_node("MatMul", ["x", "w2"], ["y2"], name="second"),
        ],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", k])],
        [
            helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["B", "T", n]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["B", "T", 2 * n]),
        ],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w1, w2


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, {"x": x}))


def _bits(weights: str) -> int:
    return 7 if weights == "s7" else 8


def _reference(x: np.ndarray, w: np.ndarray, weights: str = "s8") -> np.ndarray:
    """The docstring's arithmetic in NumPy: per-row symmetric activations, per-column symmetric weights."""
    scale_row = np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-30) / np.float32(127)
    x_q = np.rint(x / scale_row)  # round half to even, as QuantizeLinear
    w_q, scale_col = quantize_weight(w, 2 ** (_bits(weights) - 1) - 1)
    return (x_q.astype(np.float64) @ w_q.astype(np.float64)) * scale_col * scale_row


@pytest.mark.parametrize("weights", EXACT_HERE)
def test_each_row_is_quantized_on_its_own(weights: str) -> None:
    model, w1, w2 = _two_matmuls()
    quantized = quantize_per_row(model, weights=weights)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5, 48)).astype(np.float32)
    x[1, 2] *= 1000  # an outlier token: per-tensor quantization would coarsen every other row
    x[2, 4] = 0  # an all-zero row stays zero
    y1, y2 = _run(quantized, x)
    np.testing.assert_allclose(y1, _reference(x, w1, weights), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y2, _reference(x, w2, weights), rtol=1e-5, atol=1e-5)
    assert not y1[2, 4].any()
    # The same row alone, or beside other rows, gives the same bits.
    alone = _run(quantized, x[0:1, 3:4])
    assert np.array_equal(alone[0][0, 0], y1[0, 3]) and np.array_equal(alone[1][0, 0], y2[0, 3])


def _asymmetric_reference(x: np.ndarray, w: np.ndarray, weights: str = "s8") -> np.ndarray:
    """Asymmetric rows (each over [min(x, 0), max(x, 0)], an integer zero point) times asymmetric columns."""
    low = np.minimum(x.min(axis=-1, keepdims=True), 0)
    high = np.maximum(x.max(axis=-1, keepdims=True), 0)
    scale = np.maximum(high - low, 1e-30).astype(np.float32) * np.float32(1 / 255)
    zero = np.minimum(np.rint(-low / scale), 255)
    x_q = np.clip(np.rint(x / scale) + zero, 0, 255)
    w_q, w_scale, w_zero = quantize_asymmetric_weight(w, _bits(weights))
    return ((x_q - zero) @ (w_q.astype(np.float64) - w_zero)) * w_scale * scale


@pytest.mark.parametrize("weights", EXACT_HERE)
def test_asymmetric_rows_and_columns(weights: str) -> None:
    model, w1, w2 = _two_matmuls(seed=4)
    quantized = quantize_per_row(model, weights=weights, asymmetric=True)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 5, 48)).astype(np.float32)
    x[0, 1] = np.abs(x[0, 1]) + 3  # a lopsided row (all positive), as after GELU
    x[1, 2] *= 1000  # an outlier token
    x[2, 4] = 0
    y1, y2 = _run(quantized, x)
    for y, w in ((y1, w1), (y2, w2)):
        expected = _asymmetric_reference(x, w, weights)
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        # 2% of the largest value with 8-bit weights; 7-bit weights have half as many steps
        np.testing.assert_allclose(y, x @ w, atol=0.02 * 2 ** (8 - _bits(weights)) * np.abs(x @ w).max())
    assert not y1[2, 4].any()
    alone = _run(quantized, x[0:1, 1:2])  # a row's result does not depend on the other rows
    assert np.array_equal(alone[0][0, 0], y1[0, 1]) and np.array_equal(alone[1][0, 0], y2[0, 1])


def test_asymmetric_is_closer_than_symmetric_on_lopsided_rows() -> None:
    model, w1, _ = _two_matmuls(seed=6)
    x = np.abs(np.random.default_rng(7).normal(size=(4, 6, 48))).astype(np.float32)  # every row >= 0
    exact = x @ w1
    symmetric = _run(quantize_per_row(model, weights=HERE), x)[0]
    asymmetric = _run(quantize_per_row(model, weights=HERE, asymmetric=True), x)[0]
    assert np.abs(asymmetric - exact).mean() < np.abs(symmetric - exact).mean()


def test_signed_and_unsigned_weights_compute_the_same_numbers() -> None:
    """u8 weights are s8's values + 128: the same integers, on every CPU (s8 itself only where it is exact)."""
    model, w1, w2 = _two_matmuls(seed=2)
    x = np.random.default_rng(3).normal(size=(2, 7, 48)).astype(np.float32)
    unsigned = _run(quantize_per_row(model, weights="u8"), x)
    for y, w in zip(unsigned, (w1, w2), strict=True):
        np.testing.assert_allclose(y, _reference(x, w, "s8"), rtol=1e-5, atol=1e-5)
    if machine.has_vnni():
        for a, b in zip(_run(quantize_per_row(model), x), unsigned, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _clips_here() -> bool | None:
    """Whether ONNX Runtime's u8 x s8 kernels clip on this CPU: they add pairs of products in saturating int16 on
    AVX2 and AVX-512 without VNNI; VNNI accumulates in int32 (None: a CPU these tests cannot place, e.g. SSE only)."""
    if machine.has_vnni():
        return False
    return True if machine.cpu_flags() & {"avx2", "avx512bw"} else None


def _extreme(k: int = 768, n: int = 8) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:  # model, x, w
    """The worst case for int16 pair sums: every activation at its row's maximum (quantized to 255) times weight
    columns at their most negative value."""
    w = np.full((k, n), -1.0, dtype=np.float32)
    w[0] = 0.5  # each column spans [-1, 0.5], so -1 is the lowest stored step
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="only")],
        "extreme",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", n])],
        [numpy_helper.from_array(w, "w")],
    )
    x = np.ones((1, 2, k), dtype=np.float32)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), x, w


def test_s8_clips_only_without_vnni() -> None:
    """Why the encodings differ by CPU: 8-bit weights times 8-bit activations are exact where VNNI accumulates in
    int32, and clipped by VPMADDUBSW's saturating int16 pair sums where it does not; 7-bit weights never clip."""
    model, w1, _ = _two_matmuls(seed=2)
    x = np.random.default_rng(3).normal(size=(2, 7, 48)).astype(np.float32)
    error = np.abs(_run(quantize_per_row(model), x)[0] - _reference(x, w1, "s8")).max()
    if _clips_here() is False:
        assert error < 1e-4
    elif _clips_here():
        assert error > 1e-2 * np.abs(_reference(x, w1, "s8")).max()
    np.testing.assert_allclose(_run(quantize_per_row(model, weights="s7"), x)[0], _reference(x, w1, "s7"), atol=1e-5)


@pytest.mark.parametrize("weights", WEIGHT_ENCODINGS)
def test_the_worst_case_for_int16_pair_sums(weights: str) -> None:
    """Rows of 255s times columns of their lowest step, 768 long: 7-bit and u8 weights are exact on every CPU, s8
    where the CPU does not clip."""
    model, x, w = _extreme()
    exact = _asymmetric_reference(x, w, weights)  # the integer arithmetic in NumPy (u8 computes s8's integers)
    y = _run(quantize_per_row(model, weights=weights, asymmetric=True), x)[0]
    error = np.abs(y - exact).max() / np.abs(exact).max()
    if weights != "s8" or _clips_here() is False:
        assert error < 1e-5
    elif _clips_here():
        assert error > 0.1


def test_seven_bit_weights_fit_the_int16_pair_sums() -> None:
    """Every stored s7 weight is in [-64, 63], so two u8 x s8 products add to at most 2 x 255 x 64 = 32,640."""
    model, _, _ = _two_matmuls(seed=8)
    for weights, (low, high) in (("s7", (-64, 63)), ("s8", (-128, 127))):
        quantized = quantize_per_row(model, weights=weights, asymmetric=True)
        stored = [numpy_helper.to_array(i) for i in quantized.graph.initializer if i.name.endswith("/weight")]
        assert stored and all(w.dtype == np.int8 for w in stored)
        assert (min(int(w.min()) for w in stored), max(int(w.max()) for w in stored)) == (low, high)
    with pytest.raises(ValueError, match="weights='s4' is not one of s8, s7, u8"):
        quantize_per_row(model, weights="s4")


def test_matmuls_sharing_an_input_become_one_integer_matmul() -> None:
    model, _, _ = _two_matmuls()
    ops = [node.op_type for node in quantize_per_row(model).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 1 and ops.count("Split") == 1 and "MatMul" not in ops
    kept = [node.op_type for node in quantize_per_row(model, float_nodes=["second"]).graph.node]
    assert kept.count("MatMulIntegerToFloat") == 1 and kept.count("MatMul") == 1 and "Split" not in kept


def test_unknown_float_node_is_refused() -> None:
    model, _, _ = _two_matmuls()
    with pytest.raises(ValueError, match="float_nodes names no quantizable MatMul: third"):
        quantize_per_row(model, float_nodes=["third", "first"])


@pytest.mark.parametrize("opset", [14, 18])
def test_a_whole_bert_graph_keeps_its_interface(tmp_path: Path, opset: int) -> None:
    """On the tiny checkpoint: four integer MatMuls per layer (query/key/value share one), every output kept and
    close to fp32; from opset 18 on, ReduceMax takes its axes as an input."""
    export_model(str(checkpoint_path("tiny")), tmp_path / "model", opset=opset, log=lambda message: None)
    model = onnx.load(str(tmp_path / "model" / interface.MODEL_FILE))
    layers = 2
    assert len(quantizable_matmuls(model)) == 6 * layers
    quantized = quantize_per_row(model, weights=HERE)
    ops = [node.op_type for node in quantized.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 4 * layers
    names = [o.name for o in quantized.graph.output]
    assert tuple(names) == interface.output_names(layers)
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": rng.integers(1, 1000, size=(2, 9)),
        "attention_mask": np.ones((2, 9), dtype=np.int64),
        "token_type_ids": np.zeros((2, 9), dtype=np.int64),
    }
    fp32 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(names, feeds)
    int8 = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"]).run(names, feeds)
    for name, a, b in zip(names, fp32, int8, strict=True):
        cosine = np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        assert cosine.min() > 0.99, name
