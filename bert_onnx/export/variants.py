"""Building the fast variants of an exported fp32 graph, and the gate each must pass against PyTorch fp32.

- ``opt``: ONNX Runtime's transformer fusions. EmbedLayerNormalization is left off: ``hidden_states.0`` is a graph
  output, and with that fusion the embedding would be computed twice (fused, and again for the output).
  Gate: max abs diff <= 1e-4 on every output, as fp32.
- ``int8``: per-token int8 (:mod:`bert_onnx.export.int8`): each activation row quantized on its own, so a text's
  result never depends on its batchmates; a few FFN down-projections kept float if needed (:func:`int8_ladder`).
  Gate: on real text, mean-pooled normalized sentence embeddings, batched as ``Encoder.embed`` batches, against
  PyTorch fp32: mean cosine >= 0.997, minimum >= 0.985, top-10 neighbour agreement >= 0.95; and each text's
  embedding alone equals it in company within 1e-4.
- ``fp16``: the fused graph in half precision, fp32 inputs/outputs kept, LayerNorm/Softmax in fp32. Gate, on CUDA:
  per-token cosine >= 0.999 on every hidden state and pooler_output.
- ``openvino-fp32`` / ``openvino-bf16``: no new file; OpenVINO compiling ``model.onnx`` at that precision. Gates:
  as fp32 (max abs diff <= 1e-4), and per-token cosine >= 0.9999 on every output for bf16.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert_onnx import interface, machine
from bert_onnx.export.errors import ExportError
from bert_onnx.export.graph import family_of, graph_inputs, graph_outputs
from bert_onnx.export.validate import compare, run_both, torch_outputs, validate_graph, validation_batch
from bert_onnx.gates import (
    FP16_MIN_TOKEN_COSINE,
    INVARIANCE_TEXTS,
    OPENVINO_BF16_MIN_TOKEN_COSINE,
    cosine_checks,
    int8_checks,
    real_tokens,
    sentence_embeddings,
)
from bert_onnx.manifest import ParityReport, VariantRecord
from bert_onnx.runtime.session import create_session
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


def _optimized(fp32_path: Path, config: Any, use_gpu: bool = False) -> Any:
    from onnxruntime.transformers.optimizer import optimize_model

    return optimize_model(
        str(fp32_path),
        model_type=_fusion_type(config),
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        optimization_options=_fusion_options(config),
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


def gate_opt(model: Any, target: Path, tokenizer: Any, max_length: int) -> VariantRecord:
    report = validate_graph(model, target, tokenizer, max_length)
    return VariantRecord.from_parity(target.name, interface.VARIANT_DEVICES["opt"], report)


# -- int8 --------------------------------------------------------------------------------------------------------


def build_int8(fp32_path: Path, target: Path, float_nodes: Sequence[str] = (), unsigned_weights: bool = False) -> None:
    """Per-token int8 (:mod:`bert_onnx.export.int8`): each activation row quantized with its own scale, weights
    per output column, signed or (``unsigned_weights``, for CPUs without VNNI) unsigned; ``float_nodes`` stay
    fp32 (see :func:`int8_ladder`)."""
    import onnx

    from bert_onnx.export.int8 import quantize_per_row

    model = onnx.load(str(fp32_path))
    onnx.save(quantize_per_row(model, float_nodes, unsigned_weights), str(target))


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


def build_int8_gated(build: Build) -> VariantRecord:
    """Climb :func:`int8_ladder` until a quantized graph passes the gate; the last failure if none does."""
    from bert_onnx.export.corpus import split

    texts, _ = split(GATE_TEXTS)
    model, max_length = build.model, build.max_length

    def torch_run(names: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = model(**{name: torch.from_numpy(value) for name, value in feeds.items()})
        return [np.asarray(out.last_hidden_state.numpy())]

    reference = sentence_embeddings(texts, build.runtime_tokenizer, torch_run, max_length)
    build.references["embeddings"] = reference  # stored in gates.npz: verify and tune check int8 again
    unsigned = not machine.has_vnni()
    weights = "u8 weights (this CPU has no VNNI)" if unsigned else "s8 weights (VNNI)"
    record: VariantRecord | None = None
    for float_nodes in int8_ladder(build.fp32_path, family_of(model.config).down_projections):
        build_int8(build.fp32_path, build.target, float_nodes, unsigned)
        _check_outputs(build.target, model.config)
        session = create_session(build.target, device="cpu")
        checks = int8_checks(texts, reference, build.runtime_tokenizer, session.run, max_length)
        kept = f"{len(float_nodes)} FFN down-projection(s) kept in float: {', '.join(float_nodes) or 'none'}"
        record = VariantRecord(
            file=build.target.name,
            devices=interface.VARIANT_DEVICES["int8"],
            gate=(
                f"mean-pooled normalized sentence embeddings of {len(texts)} real paragraphs (Python reference "
                f"documentation, pydoc_data.topics), batched as Encoder.embed batches, against PyTorch fp32; batch "
                f"invariance: {INVARIANCE_TEXTS} of them alone vs batched and beside a {max_length}-token text; "
                f"per-token int8, {weights}, {kept}"
            ),
            checks=checks,
        )
        build.log(
            f"int8 with {len(float_nodes)} float down-projection(s): "
            + ", ".join(f"{c.name} {c.value:.4g}" for c in record.checks)
        )
        if record.passed:
            break
    assert record is not None
    return record


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


def gate_fp16(model: Any, target: Path, tokenizer: Any, max_length: int) -> VariantRecord:
    batch, description, expected, actual = run_both(model, target, tokenizer, max_length, device="cuda")
    return VariantRecord(
        file=target.name,
        devices=interface.VARIANT_DEVICES["fp16"],
        gate=f"per-token cosine to PyTorch fp32 on CUDA, non-padded positions ({description})",
        checks=cosine_checks(
            real_tokens(expected, batch["attention_mask"]),
            real_tokens(actual, batch["attention_mask"]),
            FP16_MIN_TOKEN_COSINE,
        ),
    )


def gate_openvino(model: Any, fp32_path: Path, tokenizer: Any, max_length: int, precision: str) -> VariantRecord:
    """OpenVINO compiling ``fp32_path`` at ``precision`` against PyTorch fp32: fp32 as the fp32 gate (max abs diff
    <= 1e-4 per output), bf16 by per-token cosine >= 0.9999 on every output."""
    from bert_onnx.runtime.openvino_backend import OpenVINOSession

    batch, description = validation_batch(tokenizer, max_length, graph_inputs(model.config))
    expected = torch_outputs(model, batch)
    session = OpenVINOSession(fp32_path, precision)
    names = list(expected)
    actual = dict(zip(names, session.run(names, batch), strict=True))
    name = interface.OPENVINO_VARIANTS[precision]
    if precision == "fp32":
        report = ParityReport(
            batch_size=int(batch["input_ids"].shape[0]),
            sequence_length=int(batch["input_ids"].shape[1]),
            description=description,
            outputs=compare(expected, actual, batch["attention_mask"]),
        )
        record = VariantRecord.from_parity(fp32_path.name, interface.VARIANT_DEVICES[name], report)
        return dataclasses.replace(record, gate=f"OpenVINO fp32, {record.gate}")
    return VariantRecord(
        file=fp32_path.name,
        devices=interface.VARIANT_DEVICES[name],
        gate=f"OpenVINO bf16: per-token cosine to PyTorch fp32, non-padded positions ({description})",
        checks=cosine_checks(
            real_tokens(expected, batch["attention_mask"]),
            real_tokens(actual, batch["attention_mask"]),
            OPENVINO_BF16_MIN_TOKEN_COSINE,
        ),
    )


# -- one entry point per variant ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    """What every variant builder needs: the PyTorch model (the reference), the fp32 graph, where to write."""

    model: Any
    fp32_path: Path
    target: Path
    tokenizer: Any  # the transformers tokenizer, for the parity batch
    max_length: int
    log: Callable[[str], None]
    runtime_tokenizer: Tokenizer  # the folder's own tokenizer, for gates measured as Encoder.embed runs
    references: dict[str, Any] = dataclasses.field(default_factory=dict)  # what gates.npz must add (int8)


def make_opt(build: Build) -> tuple[VariantRecord, dict[str, object]]:
    fused = build_opt(build.fp32_path, build.target, build.model.config)
    record = gate_opt(build.model, build.target, build.tokenizer, build.max_length)
    return record, {"opt_fused_operators": fused}


def make_int8(build: Build) -> tuple[VariantRecord, dict[str, object]]:
    return build_int8_gated(build), {"int8_weights": "s8" if machine.has_vnni() else "u8"}


def make_fp16(build: Build) -> tuple[VariantRecord, dict[str, object]]:
    build_fp16(build.fp32_path, build.target, build.model.config)
    return gate_fp16(build.model, build.target, build.tokenizer, build.max_length), {}


def make_openvino_fp32(build: Build) -> tuple[VariantRecord, dict[str, object]]:
    return gate_openvino(build.model, build.fp32_path, build.tokenizer, build.max_length, "fp32"), {}


def make_openvino_bf16(build: Build) -> tuple[VariantRecord, dict[str, object]]:
    return gate_openvino(build.model, build.fp32_path, build.tokenizer, build.max_length, "bf16"), {}


# Builds the variant at ``build.target`` and measures its gate; the caller decides what a failed gate means.
MAKERS: dict[str, Callable[[Build], tuple[VariantRecord, dict[str, object]]]] = {
    "opt": make_opt,
    "int8": make_int8,
    "fp16": make_fp16,
    "openvino-fp32": make_openvino_fp32,
    "openvino-bf16": make_openvino_bf16,
}
