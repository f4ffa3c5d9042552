"""Building each choice's graph (:mod:`bert_onnx.choices`) from the exported fp32 graph, and measuring its gate.

The gates are defined once, as data on each choice, and measured by :mod:`bert_onnx.gates` the same way here (on
PyTorch's outputs of this export, every row) as in ``bert-onnx verify`` (on the stored selection of them). Each
choice is opened for its gate by the backend that runs it (:mod:`bert_onnx.runtime.backends`).

- ``opt``: ONNX Runtime's transformer fusions. EmbedLayerNormalization is left off: ``hidden_states.0`` is a graph
  output, and with that fusion the embedding would be computed twice (fused, and again for the output).
  Gate: max abs diff <= 1e-4 on every output, as fp32.
- ``int8``: per-token int8 (:mod:`bert_onnx.export.int8`): each activation row quantized on its own, so a text's
  result never depends on its batchmates; on a CPU without VNNI 7-bit weights first, then 8-bit; a few FFN
  down-projections kept float if needed (:func:`int8_rungs`).
  Gate: on real text, mean-pooled normalized sentence embeddings, batched as ``Encoder.embed`` batches, against
  PyTorch fp32: mean cosine >= 0.997, minimum >= 0.985, top-10 neighbour agreement >= 0.95; and each text's
  embedding alone equals it in company within 1e-4.
- ``fp16``: the fused graph in half precision, fp32 inputs/outputs kept, LayerNorm/Softmax in fp32. Gate, on CUDA:
  per-token cosine >= 0.999 on every hidden state and pooler_output.
- ``openvino-fp32`` / ``openvino-bf16``: no new file; OpenVINO compiling ``model.onnx`` at that precision. Gates:
  as fp32 (max abs diff <= 1e-4), and per-token cosine >= 0.9999 on every output for bf16.
- ``opt-int8``: ``opt``'s fusions (SkipLayerNormalization, BiasGelu; attention as MultiHeadAttention, so the query,
  key and value projections stay MatMuls) with every MatMul in per-token int8, as ``int8``. Gate: as ``int8``.
- ``openvino-int8`` / ``openvino-int8-bf16``: NNCF's static int8 as an OpenVINO IR
  (:mod:`bert_onnx.export.openvino_int8`), fp32 or bf16 for the rest. Gate: as ``int8``.

Every embeddings gate is measured on two corpora, documentation paragraphs and short informal texts
(:mod:`bert_onnx.export.corpus`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert_onnx import choices, gates, machine
from bert_onnx.choices import Choice
from bert_onnx.export.errors import ExportError
from bert_onnx.export.graph import family_of, graph_outputs
from bert_onnx.gates import Forward, References, sentence_embeddings
from bert_onnx.manifest import VariantRecord
from bert_onnx.runtime import backends
from bert_onnx.runtime.tokenizer import Tokenizer

GATE_TEXTS = 1000  # real paragraphs for the int8 gate (stored in gates.npz for verify and tune)
INT8_RUNGS = 3  # int8 recipes tried before giving up: none, then 1..3 FFN down-projections in float


def _fusion_type(config: Any) -> str:
    """The model_type ONNX Runtime's optimizer fuses this family's graph as (the family table's ``fusion``)."""
    fusion = family_of(config).fusion
    if fusion is None:  # the family table lists opt and fp16 as not offered, so export refused them already
        raise ExportError(f"ONNX Runtime's fusions do not apply to {config.model_type} graphs")
    return fusion


def _fusion_options(config: Any) -> Any:
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(_fusion_type(config))
    options.enable_embed_layer_norm = False  # hidden_states.0 is an output: keep one embedding computation
    return options


def _optimized(fp32_path: Path, config: Any, use_gpu: bool = False, options: Any = None) -> Any:
    from onnxruntime.transformers.optimizer import optimize_model

    return optimize_model(
        str(fp32_path),
        model_type=_fusion_type(config),
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        optimization_options=options or _fusion_options(config),
        opt_level=0,  # our fusions only; ONNX Runtime applies its own graph optimizations at load
        use_gpu=use_gpu,
    )


def _check_outputs(path: Path, config: Any) -> None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    names = tuple(o.name for o in graph.output)
    if names != graph_outputs(config):
        raise ExportError(f"{path.name}: the rewritten graph has outputs {list(names)}, not the interface's")


def build_opt(fp32_path: Path, target: Path, config: Any) -> dict[str, int]:
    """Write the fused graph; return the count of each fused operator."""
    model = _optimized(fp32_path, config)
    model.save_model_to_file(str(target))
    _check_outputs(target, config)
    return {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}


# -- int8 --------------------------------------------------------------------------------------------------------


def build_int8(fp32_path: Path, target: Path, float_nodes: Sequence[str] = (), weights: str = "s8") -> None:
    """Per-token int8 (:mod:`bert_onnx.export.int8`): each activation row quantized over its own [min, max], weights
    per output column over theirs, stored as ``weights`` (s8 for CPUs with VNNI, s7 or u8 without);
    ``float_nodes`` stay fp32 (see :func:`int8_ladder`)."""
    import onnx

    from bert_onnx.export.int8 import quantize_per_row

    model = onnx.load(str(fp32_path))
    onnx.save(quantize_per_row(model, float_nodes, weights, asymmetric=True), str(target))


def int8_ladder(fp32_path: Path, down_projections: str, rungs: int = INT8_RUNGS) -> list[list[str]]:
    """The float-node sets int8 export tries, in order, until one passes the gate: none first, then the FFN
    down-projections (the MatMuls whose names match the family table's ``down_projections``, BERT's
    ``layer.i/output/dense``) from the first layer on, one, two, three.

    The down-projection reads GELU's output, whose rows are the most lopsided (GELU is >= -0.17, so a symmetric
    row scale spends half its range on values that never occur): measured on the real 6-layer MiniLM, per-row
    quantization adds the most relative error there (1.5-2.2% against 1.1-1.6% for the other MatMuls).
    """
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    # Graph order is layer order: each layer reads the one before it.
    down = [node.name for node in graph.node if node.op_type == "MatMul" and re.search(down_projections, node.name)]
    return [down[:count] for count in range(min(rungs, len(down)) + 1)]


def torch_sentence_embeddings(model: Any, texts: Sequence[str], tokenizer: Tokenizer, max_length: int) -> np.ndarray:
    """PyTorch fp32's mean-pooled normalized embeddings of ``texts``, batched as ``Encoder.embed`` batches: the
    reference of the embeddings gate (stored in gates.npz, so verify and tune check int8 again)."""

    def torch_run(names: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = model(**{name: torch.from_numpy(value) for name, value in feeds.items()})
        return [np.asarray(out.last_hidden_state.numpy())]

    return sentence_embeddings(texts, tokenizer, torch_run, max_length)


_WEIGHTS = {
    "s8": "s8 weights (VNNI)",
    "s7": "7-bit s8 weights (this CPU has no VNNI)",
    "u8": "u8 weights (this CPU has no VNNI)",
}


def int8_rungs(fp32_path: Path, down_projections: str) -> list[tuple[str, list[str]]]:
    """What int8 export tries, in order, until one passes the gate: (weight encoding, float MatMuls).

    With VNNI: s8 weights on :func:`int8_ladder`. Without VNNI: 7-bit weights with every MatMul in int8 first (the
    u8 x s8 kernels: bert-base shape at 8 x 128 on AVX2 ran 1.52x ORT fp32 against u8 weights' 1.23x), then u8
    weights on :func:`int8_ladder` (8-bit precision: MiniLM's informal top-10 agreement 0.951 against s7's 0.933).
    """
    ladder = int8_ladder(fp32_path, down_projections)
    *faster, finest = machine.int8_weight_encodings()  # the faster ones all-int8 only; the finest climbs the ladder
    return [*((weights, ladder[0]) for weights in faster), *((finest, nodes) for nodes in ladder)]


def _climb(
    build: Build, label: str, write: Callable[[Sequence[str], str], str]
) -> tuple[VariantRecord, dict[str, object]]:
    """Climb :func:`int8_rungs` until the graph ``write(float_nodes, weights)`` builds (and describes) passes the
    gate; the last failure if none does. The details name the weights in ``extra`` (``int8_weights`` for ``int8``,
    ``opt_int8_weights`` for ``opt-int8``), which the runtime reads to know where the graph is exact."""
    record: VariantRecord | None = None
    weights = ""
    for weights, float_nodes in int8_rungs(build.fp32_path, family_of(build.config).down_projections):
        graph = write(float_nodes, weights)
        _check_outputs(build.target, build.config)
        kept = f"{len(float_nodes)} FFN down-projection(s) kept in float: {', '.join(float_nodes) or 'none'}"
        record = build.measure(f"{graph}per-token asymmetric int8, {_WEIGHTS[weights]}, {kept}")
        build.log(
            f"{label} with {weights} weights, {len(float_nodes)} float down-projection(s): "
            + ", ".join(f"{c.name} {c.value:.4g}" for c in record.checks)
        )
        if record.passed:
            break
    assert record is not None
    return record, {choices.int8_weights_key(build.choice.name): weights}


def make_int8(build: Build) -> tuple[VariantRecord, dict[str, object]]:
    """Per-token int8 on the exported graph, climbing :func:`int8_rungs` until it passes the gate."""

    def write(float_nodes: Sequence[str], weights: str) -> str:
        build_int8(build.fp32_path, build.target, float_nodes, weights)
        return ""

    return _climb(build, "int8", write)


# -- fp16 --------------------------------------------------------------------------------------------------------


def build_fp16(fp32_path: Path, target: Path, config: Any) -> None:
    model = _optimized(fp32_path, config, use_gpu=True)
    # keep_io_types: callers feed and read float32 exactly as with the other variants.
    model.convert_float_to_float16(
        keep_io_types=True, op_block_list=["LayerNormalization", "SkipLayerNormalization", "Softmax"]
    )
    _drop_duplicate_nodes(model.model)
    model.save_model_to_file(str(target))
    _check_outputs(target, config)


def _drop_duplicate_nodes(model: Any) -> None:
    """Remove nodes that repeat an earlier node exactly (same name, operator, inputs, outputs, attributes).

    ONNX Runtime 1.31's float16 converter inserts one Cast per blocked node for an initializer that several blocked
    nodes read (the embedding LayerNorm's bias), each with the same name and output: ONNX Runtime then refuses the
    graph ("two nodes with same node name"). Keeping the first copy is exact; any other clash is an error.
    """
    seen: dict[str, bytes] = {}
    kept = []
    for node in model.graph.node:
        encoded = node.SerializeToString(deterministic=True)
        if node.name in seen:
            if seen[node.name] != encoded:
                raise ExportError(f"the float16 graph has two different nodes named {node.name!r}")
            continue
        seen[node.name] = encoded
        kept.append(node)
    if len(kept) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(kept)


# -- one entry point per variant ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    """What a choice's builder needs: the fp32 graph, where to write its own file, and its gate, measured on what
    it wrote against PyTorch's references of this export (the one gate definition verify uses too)."""

    choice: Choice
    fp32_path: Path
    target: Path  # where the choice's own file goes (unused by choices without one)
    config: Any  # the checkpoint's transformers config
    log: Callable[[str], None]
    references: References  # PyTorch fp32's outputs on the parity batch, every row, and on the gate's texts
    tokenizer: Tokenizer  # the folder's own tokenizer: gates are measured as Encoder.embed runs
    max_length: int

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    def forward(self) -> Forward:
        """The choice, opened from what export wrote, by the backend that runs it (on CUDA if it is CUDA-only)."""
        device = "cpu" if "cpu" in self.choice.devices else self.choice.devices[0]
        path = self.target if self.choice.own_file else self.fp32_path
        opening = backends.Opening(path, device, threads=None, io_binding=None, cache_dir=None, sha256=None)
        return backends.backend_of(self.choice).open(self.choice, opening).run

    def measure(self, details: str = "") -> VariantRecord:
        """The choice's gate on what is written now."""
        described = gates.describe(self.choice, self.references, self.max_length)
        return VariantRecord(
            file=self.choice.file,
            devices=self.choice.devices,
            gate=described + (f"; {details}" if details else ""),
            checks=gates.measure(self.choice.gate, self.references, self.forward(), self.tokenizer, self.max_length),
        )


def build_opt_int8(
    fp32_path: Path, target: Path, config: Any, float_nodes: Sequence[str] = (), weights: str = "s8"
) -> dict[str, int]:
    """``opt``'s fusions with attention as MultiHeadAttention, then every MatMul left (the query, key and value
    projections too) in per-token int8, as :func:`build_int8`; returns the count of each fused operator."""
    import onnx

    from bert_onnx.export.int8 import quantize_per_row

    options = _fusion_options(config)
    options.use_multi_head_attention = True  # Attention would hold the QKV weights in float inside it
    fused = _optimized(fp32_path, config, options=options)
    quantized = quantize_per_row(fused.model, float_nodes, weights, asymmetric=True)
    onnx.save(quantized, str(target))
    return {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}


def make_opt_int8(build: Build) -> tuple[VariantRecord, dict[str, object]]:
    """Per-token int8 on the fused graph, climbing :func:`int8_rungs` as :func:`make_int8` does."""
    fused: dict[str, int] = {}

    def write(float_nodes: Sequence[str], weights: str) -> str:
        fused.update(build_opt_int8(build.fp32_path, build.target, build.config, float_nodes, weights))
        return f"fused graph ({', '.join(sorted(fused))}), "

    record, details = _climb(build, "opt-int8", write)
    return record, {**details, "opt_int8_fused_operators": fused}


def make_openvino_int8(build: Build) -> tuple[VariantRecord, dict[str, object]]:
    """NNCF's static int8 as an OpenVINO IR (:mod:`bert_onnx.export.openvino_int8`)."""
    from bert_onnx.export import openvino_int8

    rule = family_of(build.config).down_projections
    down_projections = int8_ladder(build.fp32_path, rule, rungs=build.num_layers)[-1]
    return openvino_int8.make_openvino_int8(build, down_projections, GATE_TEXTS)


def make_opt(build: Build) -> tuple[VariantRecord, dict[str, object]]:
    fused = build_opt(build.fp32_path, build.target, build.config)
    return build.measure(), {"opt_fused_operators": fused}


def make_fp16(build: Build) -> tuple[VariantRecord, dict[str, object]]:
    build_fp16(build.fp32_path, build.target, build.config)
    return build.measure(), {}


def gate_only(build: Build) -> tuple[VariantRecord, dict[str, object]]:
    """A choice with no file of its own (a backend compiling ``model.onnx`` at a precision): only its gate."""
    return build.measure(), {}


# Builds the choice's file (if it has one) and measures its gate; the caller decides what a failed gate means.
MAKERS: dict[str, Callable[[Build], tuple[VariantRecord, dict[str, object]]]] = {
    "opt": make_opt,
    "int8": make_int8,
    "fp16": make_fp16,
    "openvino-fp32": gate_only,
    "openvino-bf16": gate_only,
    "opt-int8": make_opt_int8,
    "openvino-int8": make_openvino_int8,
    "openvino-int8-bf16": make_openvino_int8,
}
assert set(MAKERS) == set(choices.NAMES) - {choices.DEFAULT}, "every choice but fp32 has a maker"
