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

How the integer weights are stored depends on the CPU's int8 dot product (``weights``, one of
:data:`WEIGHT_ENCODINGS`):

- ``s8``: signed 8-bit, for CPUs with VNNI, whose u8 x s8 dot product accumulates in int32.
- ``s7``: signed 7-bit, in [-64, 63] (half the steps of s8). Without VNNI, ONNX Runtime's u8 x s8 kernels add pairs
  of products in saturating int16 (VPMADDUBSW): 8-bit activations times 8-bit weights overflow it (measured on
  AVX2: errors of 1.7e5 in a 768-long dot product, and MiniLM's int8 embeddings at cosine 0.54), while
  2 x 255 x 64 = 32,640 fits, so 7-bit weights are exact on every CPU at the u8 x s8 kernels' speed.
- ``u8``: the s8 values stored + 128 with zero point + 128. u8 x u8 kernels widen to int16 before multiplying, so
  the result is the same exact integers as s8 on every CPU, at a lower speed than u8 x s8 without VNNI (AVX2,
  this per-token subgraph at bert-base's feed-forward shape: 225 against 287 GOP/s for s7).

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
WEIGHT_ENCODINGS: tuple[str, ...] = ("s8", "s7", "u8")
_EPS = np.float32(1e-30)  # an all-zero row gets scale 1e-30/127, quantizes to zeros and stays zero


@dataclass(frozen=True)
class QuantizedMatMul:
    """One MatMul of the float graph that reads a constant 2-d weight: the candidates for int8."""

    name: str
    input: str
    weight: str
    output: str


def quantizable_matmuls(model: onnx.ModelProto) -> list[QuantizedMatMul]:
    """MatMul nodes whose second input is a 2-d float initializer, in graph order."""
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


def quantize_weight(weight: np.ndarray, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-column int8 in [-qmax, qmax]: ``(W_q (K, N) int8, scale (N,) float32)``, ``W ≈ W_q * scale``
    (``qmax`` 63 for 7-bit weights)."""
    absmax = np.abs(weight).max(axis=0).astype(np.float32)
    scale = np.where(absmax > 0, absmax / np.float32(qmax), np.float32(1)).astype(np.float32)
    quantized = np.clip(np.rint(weight / scale), -qmax, qmax).astype(np.int8)
    return quantized, scale


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def quantize_per_row(
    model: onnx.ModelProto,
    float_nodes: Collection[str] = (),
    weights: str = "s8",
    asymmetric: bool = False,
) -> onnx.ModelProto:
    """A copy of ``model`` with every constant-weight MatMul not named in ``float_nodes`` in per-row int8, its
    weights stored as ``weights`` (one of :data:`WEIGHT_ENCODINGS`, see the module docstring).

    MatMuls that read the same tensor (a layer's query, key and value) become one integer MatMul over their
    weights side by side, split afterwards: the input is quantized once and the GEMM is wider. ``asymmetric``: each
    row spans its own [min, max] (a zero point per row) and each weight column its own (a zero point per column).
    """
    if weights not in WEIGHT_ENCODINGS:
        raise InvalidValueError(f"weights={weights!r} is not one of {', '.join(WEIGHT_ENCODINGS)}")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    candidates = quantizable_matmuls(model)
    unknown = set(float_nodes) - {m.name for m in candidates}
    if unknown:
        raise InvalidValueError(f"float_nodes names no quantizable MatMul: {', '.join(sorted(unknown))}")
    groups: dict[str, list[QuantizedMatMul]] = {}  # input tensor -> the MatMuls reading it, in graph order
    for matmul in candidates:
        if matmul.name not in float_nodes:
            groups.setdefault(matmul.input, []).append(matmul)
    recipe = _Recipe(_opset(model), weights, asymmetric)
    initializers = {i.name: i for i in graph.initializer}
    added = recipe.constants()
    replacing: dict[str, list[onnx.NodeProto]] = {}  # name of a group's first MatMul -> the nodes replacing it
    quantized: dict[tuple[str, ...], str] = {}  # a group's weights -> where their int8 copy is (shared: once)
    for index, (source, matmuls) in enumerate(groups.items()):
        key = tuple(m.weight for m in matmuls)
        first = key not in quantized
        w = quantized.setdefault(key, f"int8/g{index}")
        arrays = [numpy_helper.to_array(initializers[name]) for name in key]
        nodes, tensors = recipe.group(f"int8/g{index}", w, source, arrays, [m.output for m in matmuls], first)
        replacing[matmuls[0].name] = nodes
        added += tensors
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


def quantize_asymmetric_weight(weight: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column signed ``bits``-bit integers over each column's own [min, max] (0 kept exact): ``(W_q, scale,
    zero_point)``, all per column, ``W ≈ (W_q - zero_point) * scale``, ``W_q`` and ``zero_point`` int8 in
    [-2**(bits-1), 2**(bits-1) - 1]."""
    if bits not in (7, 8):
        raise InvalidValueError(f"bits={bits!r} is not 7 or 8")
    low_q, high_q = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    low = np.minimum(weight.min(axis=0), 0).astype(np.float32)
    high = np.maximum(weight.max(axis=0), 0).astype(np.float32)
    scale = np.where(high > low, (high - low) / np.float32(high_q - low_q), np.float32(1)).astype(np.float32)
    zero_point = np.clip(np.rint(low_q - low / scale), low_q, high_q)
    quantized = np.clip(np.rint(weight / scale) + zero_point, low_q, high_q).astype(np.int8)
    return quantized, scale, zero_point.astype(np.int8)


@dataclass(frozen=True)
class _Recipe:
    """How one group of MatMuls becomes nodes: the graph's opset, the weights' encoding, symmetric or not."""

    opset: int
    weights: str
    asymmetric: bool

    @property
    def unsigned_weights(self) -> bool:
        return self.weights == "u8"

    @property
    def weight_bits(self) -> int:
        return 7 if self.weights == "s7" else 8

    def constants(self) -> list[onnx.TensorProto]:
        added = [
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "int8/minus_one"),
            numpy_helper.from_array(np.array(1 / (255 if self.asymmetric else 127), dtype=np.float32), "int8/inv_qmax"),
            numpy_helper.from_array(np.array(_EPS, dtype=np.float32), "int8/eps"),
            numpy_helper.from_array(np.array(1, dtype=np.float32), "int8/one"),
            numpy_helper.from_array(np.array(0 if self.asymmetric else 128, dtype=np.uint8), "int8/zero_point"),
        ]
        if self.asymmetric:
            added.append(numpy_helper.from_array(np.array(0, dtype=np.float32), "int8/zero"))
            added.append(numpy_helper.from_array(np.array(255, dtype=np.float32), "int8/u8_max"))
        if self.opset >= 18:  # ReduceMax/ReduceMin take their axes as an input from opset 18 on
            added.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "int8/last_axis"))
        return added

    def _weights(self, p: str, weight: np.ndarray) -> tuple[list[onnx.TensorProto], np.ndarray]:
        """The stored weight tensors of a group, and W's dequantized column sums (the asymmetric correction)."""
        if self.asymmetric:
            quantized, scale, zero_point = quantize_asymmetric_weight(weight, self.weight_bits)
            stored_zero = zero_point
        else:
            quantized, scale = quantize_weight(weight, 2 ** (self.weight_bits - 1) - 1)
            stored_zero = zero_point = np.zeros(quantized.shape[1], dtype=np.int8)
        column_sums = (quantized.astype(np.int64) - zero_point).sum(axis=0).astype(np.float32) * scale
        if self.unsigned_weights:  # the same values, stored + 128 with zero point + 128 (see the module docstring)
            quantized = (quantized.astype(np.int16) + 128).astype(np.uint8)  # (K, sum of N)
            stored_zero = (zero_point.astype(np.int16) + 128).astype(np.uint8)
        tensors = [
            numpy_helper.from_array(quantized, f"{p}/weight"),
            numpy_helper.from_array(scale, f"{p}/weight_scale"),
            numpy_helper.from_array(np.array([-1, quantized.shape[0]], dtype=np.int64), f"{p}/rows_by_k"),
        ]
        if self.asymmetric or self.unsigned_weights:
            tensors.append(numpy_helper.from_array(stored_zero, f"{p}/weight_zero_point"))
        return tensors, column_sums

    def group(
        self, p: str, w: str, source: str, weights: list[np.ndarray], outputs: list[str], store: bool = True
    ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """The nodes computing ``source @ W`` for each weight of one group, in per-row int8, and their tensors.
        ``w``: where the group's int8 weights are; ``store``: add them (a weight shared by several calls, as
        ALBERT's layer is, is stored once)."""
        tensors, column_sums = self._weights(w, np.concatenate(weights, axis=1))
        if not store:
            tensors = []
        product = outputs[0] if len(outputs) == 1 else f"{p}/product"
        nodes = [*self._quantize(p, w, source), *self._multiply(p, w, product)]
        if self.asymmetric and store:
            tensors.append(numpy_helper.from_array(column_sums, f"{w}/column_sums"))
        if len(outputs) > 1:
            sizes = np.array([w.shape[1] for w in weights], dtype=np.int64)
            tensors.append(numpy_helper.from_array(sizes, f"{p}/split"))
            nodes.append(helper.make_node("Split", [product, f"{p}/split"], outputs, name=f"{p}/Split", axis=-1))
        return nodes, tensors

    def _quantize(self, p: str, w: str, source: str) -> list[onnx.NodeProto]:
        """``source`` (B, T, K) -> ``{p}/q`` (B, T, K) uint8, ``{p}/scale`` (B, T, 1), and for asymmetric rows
        ``{p}/offset`` (B, T, 1): the float value of each row's zero point."""
        reduce_inputs = [source] + (["int8/last_axis"] if self.opset >= 18 else [])
        reduce_attrs: dict[str, Any] = {"keepdims": 1} if self.opset >= 18 else {"axes": [-1], "keepdims": 1}
        nodes = [
            helper.make_node("ReduceMax", reduce_inputs, [f"{p}/max"], name=f"{p}/ReduceMax", **reduce_attrs),
            helper.make_node("ReduceMin", reduce_inputs, [f"{p}/min"], name=f"{p}/ReduceMin", **reduce_attrs),
        ]
        if self.asymmetric:
            # each row spans [min(x, 0), max(x, 0)] in 255 steps; its zero point, an integer, maps 0 exactly
            nodes += [
                helper.make_node("Min", [f"{p}/min", "int8/zero"], [f"{p}/low"], name=f"{p}/Low"),
                helper.make_node("Max", [f"{p}/max", "int8/zero"], [f"{p}/high"], name=f"{p}/High"),
                helper.make_node("Sub", [f"{p}/high", f"{p}/low"], [f"{p}/range"], name=f"{p}/Range"),
                helper.make_node("Max", [f"{p}/range", "int8/eps"], [f"{p}/span"], name=f"{p}/Span"),
                helper.make_node("Mul", [f"{p}/span", "int8/inv_qmax"], [f"{p}/scale"], name=f"{p}/Scale"),
                helper.make_node("Div", [f"{p}/low", f"{p}/scale"], [f"{p}/low_steps"], name=f"{p}/LowSteps"),
                helper.make_node("Neg", [f"{p}/low_steps"], [f"{p}/neg_low"], name=f"{p}/NegLow"),
                helper.make_node("Round", [f"{p}/neg_low"], [f"{p}/zero_float"], name=f"{p}/ZeroRound"),
                helper.make_node("Min", [f"{p}/zero_float", "int8/u8_max"], [f"{p}/zero_clip"], name=f"{p}/ZeroClip"),
                helper.make_node("Mul", [f"{p}/zero_clip", f"{p}/scale"], [f"{p}/offset"], name=f"{p}/Offset"),
                helper.make_node("Reshape", [f"{p}/zero_clip", "int8/minus_one"], [f"{p}/zp_row"], name=f"{p}/ZpRow"),
                helper.make_node(
                    "Cast", [f"{p}/zp_row"], [f"{p}/zero_points"], name=f"{p}/ZeroPoints", to=TensorProto.UINT8
                ),
            ]
        else:
            nodes += [
                # max |x| per row from its max and min: two reads, and no |x| tensor written
                helper.make_node("Neg", [f"{p}/min"], [f"{p}/neg_min"], name=f"{p}/Neg"),
                helper.make_node("Max", [f"{p}/max", f"{p}/neg_min", "int8/eps"], [f"{p}/absmax"], name=f"{p}/AbsMax"),
                helper.make_node("Mul", [f"{p}/absmax", "int8/inv_qmax"], [f"{p}/scale"], name=f"{p}/Scale"),
            ]
        nodes += [
            # QuantizeLinear takes one scale per row of a 2-d input (axis 0), with a zero point per row
            helper.make_node("Reshape", [f"{p}/scale", "int8/minus_one"], [f"{p}/row_scale"], name=f"{p}/RowScale"),
            helper.make_node("Reshape", [source, f"{w}/rows_by_k"], [f"{p}/x2d"], name=f"{p}/Flatten"),  # (B*T, K)
        ]
        if not self.asymmetric:
            nodes += [
                helper.make_node("Shape", [f"{p}/row_scale"], [f"{p}/rows"], name=f"{p}/Rows"),
                helper.make_node(
                    "ConstantOfShape",
                    [f"{p}/rows"],
                    [f"{p}/zero_points"],
                    name=f"{p}/ZeroPoints",
                    value=helper.make_tensor("value", TensorProto.UINT8, [1], [128]),
                ),
            ]
        quantize_inputs = [f"{p}/x2d", f"{p}/row_scale", f"{p}/zero_points"]
        return [
            *nodes,
            helper.make_node("QuantizeLinear", quantize_inputs, [f"{p}/q2d"], name=f"{p}/Quantize", axis=0),
            helper.make_node("Shape", [source], [f"{p}/shape"], name=f"{p}/Shape"),
            helper.make_node("Reshape", [f"{p}/q2d", f"{p}/shape"], [f"{p}/q"], name=f"{p}/Unflatten"),  # (B, T, K)
        ]

    def _multiply(self, p: str, w: str, product: str) -> list[onnx.NodeProto]:
        """``{p}/q`` (B, T, K) uint8 times the group's weights (at ``w``) -> ``product`` (B, T, N) float."""
        weight_zero = [f"{w}/weight_zero_point"] if self.asymmetric or self.unsigned_weights else []
        # (x_q - z) @ (W_q - z_col) * scale_col, then * scale_row: ONNX Runtime applies a non-scalar A scale in a
        # single-threaded pass after the GEMM, so the row scale is a Mul of its own.
        nodes = [
            helper.make_node(
                "MatMulIntegerToFloat",
                [f"{p}/q", f"{w}/weight", "int8/one", f"{w}/weight_scale", "int8/zero_point", *weight_zero],
                [f"{p}/unscaled"],
                name=f"{p}/MatMulIntegerToFloat",
                domain=MS_DOMAIN,
            ),
        ]
        if not self.asymmetric:
            return [*nodes, helper.make_node("Mul", [f"{p}/unscaled", f"{p}/scale"], [product], name=f"{p}/ScaleRows")]
        # x = (x_q - zero_row) * scale_row, so x @ W = scale_row * (x_q @ W) - offset_row * colsum(W): the GEMM ran
        # with zero point 0, and the row's zero point comes off as a rank-1 correction.
        return [
            *nodes,
            helper.make_node("Mul", [f"{p}/unscaled", f"{p}/scale"], [f"{p}/scaled"], name=f"{p}/ScaleRows"),
            helper.make_node("Mul", [f"{p}/offset", f"{w}/column_sums"], [f"{p}/correction"], name=f"{p}/Correction"),
            helper.make_node("Sub", [f"{p}/scaled", f"{p}/correction"], [product], name=f"{p}/Correct"),
        ]
