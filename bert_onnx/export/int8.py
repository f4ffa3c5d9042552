"""Per-token int8: every activation row is quantized on its own, so a text's numbers never depend on its batchmates.

ONNX Runtime's dynamic quantization computes one activation scale per MatMul input over the whole batch, padding
rows included: one outlier token in a batchmate coarsens everyone's quantization, and a text's vector changes with
the company it keeps. Here each row (one token of one text) gets its own symmetric scale instead:

    x: (B, T, K) float                                  W: (K, N) float, constant
    scale_row = max(|x[b, t, :]|) / 127                 (B, T, 1)
    x_q = round(x / scale_row) + 128                    (B, T, K) uint8, zero point 128
    W_q = round(W / scale_col), scale_col per column    (K, N) int8, zero point 0
    y = (x_q - 128) @ W_q * scale_col * scale_row       (B, T, N) float

The integer product is exact, so a row's result is the same bits whatever else is in the batch.

Weights are signed (s8) for CPUs with VNNI, whose u8 x s8 dot product accumulates in int32. Without VNNI, ONNX
Runtime's u8 x s8 kernels add pairs of products in saturating int16, and activations stored around 128 overflow it
(simulated on MiniLM: the relative error of some MatMuls doubles). ``unsigned_weights`` stores the same weights
+ 128 with zero point 128 instead: u8 x u8 kernels widen to int16 before multiplying, so the result is the same
exact integers on every CPU, at a lower speed.

MatMuls that read the same input (query, key and value) become one wider integer MatMul over one quantized copy of
it. Plain ONNX operators quantize (ReduceMax/ReduceMin, QuantizeLinear with one scale per row); ONNX Runtime's
``MatMulIntegerToFloat`` multiplies with its packed weights and per-column scales, and a Mul applies the row scales.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bert_onnx.errors import InvalidValueError

MS_DOMAIN = "com.microsoft"
_EPS = np.float32(1e-30)  # an all-zero row gets scale 1e-30/127, quantizes to zeros and stays zero


@dataclass(frozen=True)
class QuantizedMatMul:
    """One MatMul of the float graph that reads a constant 2-d weight: the candidates for int8."""

    name: str
    input: str
    weight: str
    output: str


def quantizable_matmuls(model: onnx.ModelProto) -> list[QuantizedMatMul]:
    """MatMul nodes whose second input is a 2-d float initializer (or an Identity of one), in graph order."""
    initializers = {i.name: i for i in model.graph.initializer}
    # A layer whose weights are used by several calls (ALBERT's one shared layer) is exported with the first call
    # reading the initializer and the others an Identity of it.
    aliases = {
        n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity" and n.input[0] in initializers
    }
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        name = aliases.get(node.input[1], node.input[1])
        weight = initializers.get(name)
        if weight is not None and len(weight.dims) == 2 and weight.data_type == TensorProto.FLOAT:
            found.append(QuantizedMatMul(node.name, node.input[0], name, node.output[0]))
    return found


def _int8_weights(prefix: str, weights: list[np.ndarray], unsigned: bool) -> list[onnx.TensorProto]:
    """The int8 copy of weights side by side, their column scales and the (rows, K) shape their input takes."""
    weight, col_scale = quantize_weight(np.concatenate(weights, axis=1))
    if unsigned:  # the same values, stored + 128 with zero point 128 (see the module's docstring)
        weight = (weight.astype(np.int16) + 128).astype(np.uint8)  # (K, sum of N)
    return [
        numpy_helper.from_array(weight, f"{prefix}/weight"),
        numpy_helper.from_array(col_scale, f"{prefix}/weight_scale"),
        numpy_helper.from_array(np.array([-1, weight.shape[0]], dtype=np.int64), f"{prefix}/rows_by_k"),
    ]


def quantize_weight(weight: np.ndarray, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-column int8 in [-qmax, qmax]: ``(W_q (K, N) int8, scale (N,) float32)``, ``W ≈ W_q * scale``."""
    absmax = np.abs(weight).max(axis=0).astype(np.float32)
    scale = np.where(absmax > 0, absmax / np.float32(qmax), np.float32(1)).astype(np.float32)
    quantized = np.clip(np.rint(weight / scale), -qmax, qmax).astype(np.int8)
    return quantized, scale


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def quantize_per_row(
    model: onnx.ModelProto, float_nodes: Collection[str] = (), unsigned_weights: bool = False
) -> onnx.ModelProto:
    """A copy of ``model`` with every constant-weight MatMul not named in ``float_nodes`` in per-row int8.

    MatMuls that read the same tensor (a layer's query, key and value) become one integer MatMul over their
    weights side by side, split afterwards: the input is quantized once and the GEMM is wider.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    opset = _opset(model)
    candidates = quantizable_matmuls(model)
    unknown = set(float_nodes) - {m.name for m in candidates}
    if unknown:
        raise InvalidValueError(f"float_nodes names no quantizable MatMul: {', '.join(sorted(unknown))}")
    groups: dict[str, list[QuantizedMatMul]] = {}  # input tensor -> the MatMuls reading it, in graph order
    for matmul in candidates:
        if matmul.name not in float_nodes:
            groups.setdefault(matmul.input, []).append(matmul)
    initializers = {i.name: i for i in graph.initializer}
    added = [
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "int8/minus_one"),
        numpy_helper.from_array(np.array(1 / 127, dtype=np.float32), "int8/inv_qmax"),
        numpy_helper.from_array(np.array(_EPS, dtype=np.float32), "int8/eps"),
        numpy_helper.from_array(np.array(1, dtype=np.float32), "int8/one"),
        numpy_helper.from_array(np.array(128, dtype=np.uint8), "int8/zero_point"),
    ]
    if opset >= 18:  # ReduceMax/ReduceMin take their axes as an input from opset 18 on
        added.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "int8/last_axis"))
    replacing: dict[str, list[onnx.NodeProto]] = {}  # name of a group's first MatMul -> the nodes replacing it
    quantized: dict[tuple[str, ...], str] = {}  # a group's weights -> where their int8 copy is (shared: once)
    for index, (source, matmuls) in enumerate(groups.items()):
        p = f"int8/g{index}"
        key = tuple(m.weight for m in matmuls)
        if key not in quantized:
            quantized[key] = p
            added += _int8_weights(p, [numpy_helper.to_array(initializers[n]) for n in key], unsigned_weights)
        w = quantized[key]
        reduce_inputs = [source] + (["int8/last_axis"] if opset >= 18 else [])
        reduce_attrs: dict[str, Any] = {"keepdims": 1} if opset >= 18 else {"axes": [-1], "keepdims": 1}
        product = matmuls[0].output if len(matmuls) == 1 else f"{p}/product"
        nodes = [
            # max |x| per row from its max and min: two reads, and no |x| tensor written
            helper.make_node("ReduceMax", reduce_inputs, [f"{p}/max"], name=f"{p}/ReduceMax", **reduce_attrs),
            helper.make_node("ReduceMin", reduce_inputs, [f"{p}/min"], name=f"{p}/ReduceMin", **reduce_attrs),
            helper.make_node("Neg", [f"{p}/min"], [f"{p}/neg_min"], name=f"{p}/Neg"),
            helper.make_node("Max", [f"{p}/max", f"{p}/neg_min", "int8/eps"], [f"{p}/absmax"], name=f"{p}/AbsMax"),
            helper.make_node("Mul", [f"{p}/absmax", "int8/inv_qmax"], [f"{p}/scale"], name=f"{p}/Scale"),  # (B, T, 1)
            # QuantizeLinear takes one scale per row of a 2-d input (axis 0), with a zero point per row
            helper.make_node("Reshape", [f"{p}/scale", "int8/minus_one"], [f"{p}/row_scale"], name=f"{p}/RowScale"),
            helper.make_node("Shape", [f"{p}/row_scale"], [f"{p}/rows"], name=f"{p}/Rows"),
            helper.make_node(
                "ConstantOfShape",
                [f"{p}/rows"],
                [f"{p}/zero_points"],
                name=f"{p}/ZeroPoints",
                value=helper.make_tensor("value", TensorProto.UINT8, [1], [128]),
            ),
            helper.make_node("Reshape", [source, f"{w}/rows_by_k"], [f"{p}/x2d"], name=f"{p}/Flatten"),  # (B*T, K)
            helper.make_node(
                "QuantizeLinear",
                [f"{p}/x2d", f"{p}/row_scale", f"{p}/zero_points"],
                [f"{p}/q2d"],
                name=f"{p}/Quantize",
                axis=0,
            ),
            helper.make_node("Shape", [source], [f"{p}/shape"], name=f"{p}/Shape"),
            helper.make_node("Reshape", [f"{p}/q2d", f"{p}/shape"], [f"{p}/q"], name=f"{p}/Unflatten"),  # (B, T, K)
            # (x_q - 128) @ W_q * scale_col, then * scale_row: ONNX Runtime applies a non-scalar A scale in a
            # single-threaded pass after the GEMM, so the row scale is a Mul of its own.
            helper.make_node(
                "MatMulIntegerToFloat",
                [f"{p}/q", f"{w}/weight", "int8/one", f"{w}/weight_scale", "int8/zero_point"]
                + (["int8/zero_point"] if unsigned_weights else []),
                [f"{p}/unscaled"],
                name=f"{p}/MatMulIntegerToFloat",
                domain=MS_DOMAIN,
            ),
            helper.make_node("Mul", [f"{p}/unscaled", f"{p}/scale"], [product], name=f"{p}/ScaleRows"),  # (B, T, N)
        ]
        if len(matmuls) > 1:
            sizes = np.array([initializers[m.weight].dims[1] for m in matmuls], dtype=np.int64)
            added.append(numpy_helper.from_array(sizes, f"{p}/split"))
            nodes.append(
                helper.make_node(
                    "Split", [product, f"{p}/split"], [m.output for m in matmuls], name=f"{p}/Split", axis=-1
                )
            )
        replacing[matmuls[0].name] = nodes
        for matmul in matmuls[1:]:
            replacing[matmul.name] = []

    rebuilt = [new for node in graph.node for new in replacing.get(node.name, [node])]
    read = {name for node in rebuilt for name in node.input} | {o.name for o in graph.output}
    # Identities of a weight only quantized MatMuls read are left unread: drop them, and the float weight with them.
    rebuilt = [node for node in rebuilt if node.op_type != "Identity" or node.output[0] in read]
    del graph.node[:]
    graph.node.extend(rebuilt)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.initializer.extend(added)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model
