"""The model families bert-onnx exports, one entry each: what differs between BERT and its relatives is data here.

Export reads an entry to load the checkpoint, name the graph's inputs and outputs, compute the usable length, pick
ONNX Runtime's fusions and choose int8's float MatMuls; the manifest records the family's name and the runtime
reads the entry back to know the graph's inputs and whether it has a pooler. Nothing else names a family.

To add a family: one entry in :data:`FAMILIES` (its transformers ``model_type``), a checkpoint builder in
``scripts/checkpoints_families.py`` and its name in ``tests/helpers.py``; ``tests/test_families.py`` covers it.

This module imports neither torch nor onnxruntime: the runtime reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from bert_onnx.errors import InvalidValueError

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"

# How a family turns a token's index into its position (what bounds the usable length):
#   absolute       a learned table of max_position_embeddings rows, positions 0..T-1 (BERT, ALBERT, ELECTRA, ...)
#   after_padding  a learned table whose first pad_token_id + 1 rows are never used by a real token: positions count
#                  real tokens from pad_token_id + 1 (RoBERTa, XLM-R, MPNet: 514 rows, 512 tokens)
#   relative       no absolute positions; attention reads relative-position buckets (DeBERTa-v2/v3)
#   rotary         rotary embeddings, with local (windowed) and global attention layers (ModernBERT)
POSITIONS = ("absolute", "after_padding", "relative", "rotary")


@dataclass(frozen=True)
class ModelFamily:
    """One transformers model family: how to load it, what its graph takes and returns, and which variants apply.

    ``model_class``: the transformers class exported (a base model, never remote code). ``token_type_ids``: whether
    that class takes segment ids; the graph takes them only when the checkpoint has more than one segment type
    (with one, the input could only be zeros). ``pooler``: whether the model has a pooler (then the graph has a
    ``pooler_output``). ``positions``: one of :data:`POSITIONS`. ``fusion``: the ``model_type`` ONNX Runtime's
    transformer optimizer is given for the ``opt`` and ``fp16`` variants, or ``None`` where its fusions do not
    apply. ``down_projections``: a regular expression matching the names of the FFN down-projection MatMuls in the
    exported graph, in layer order: the int8 recipe keeps the first of them in float, one more per rung, until
    its gate passes. ``not_offered``: variant name -> why it is not offered for this family.
    """

    model_type: str
    model_class: str
    tokenizer: str  # the tokenizer kind its checkpoints ship, for documentation
    token_type_ids: bool
    pooler: bool
    positions: str
    fusion: str | None
    down_projections: str
    not_offered: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise InvalidValueError(f"positions={self.positions!r} is not one of {', '.join(POSITIONS)}")
        object.__setattr__(self, "not_offered", MappingProxyType(dict(self.not_offered)))
        fused = [name for name in ("opt", "fp16") if name not in self.not_offered]
        if self.fusion is None and fused:  # both are built by ONNX Runtime's fusions
            raise InvalidValueError(f"{self.model_type}: fusion=None, so not_offered must list {', '.join(fused)}")

    def graph_inputs(self, type_vocab_size: int) -> tuple[str, ...]:
        """The graph's input names, in graph order, for a checkpoint with ``type_vocab_size`` segment types."""
        segments = (TOKEN_TYPE_IDS,) if self.token_type_ids and type_vocab_size > 1 else ()
        return (INPUT_IDS, ATTENTION_MASK, *segments)

    def usable_length(self, config: Any) -> int:
        """The most tokens one text may have, [CLS]/[SEP] or <s>/</s> included, for a transformers ``config``."""
        rows = int(config.max_position_embeddings)
        if self.positions == "after_padding":
            return rows - int(config.pad_token_id) - 1
        return rows

    def check_variants(self, variants: tuple[str, ...]) -> None:
        """Refuse variants this family does not offer, each with its reason."""
        refused = [name for name in variants if name in self.not_offered]
        if refused:
            reasons = "; ".join(f"{name}: {self.not_offered[name]}" for name in refused)
            raise InvalidValueError(
                f"variant(s) {', '.join(refused)} are not offered for {self.model_type} models ({reasons})"
            )


_BERT_DOWN = r"/encoder/layer\.\d+/output/dense/MatMul$"

BERT = ModelFamily(
    model_type="bert",
    model_class="BertModel",
    tokenizer="WordPiece",
    token_type_ids=True,
    pooler=True,
    positions="absolute",
    fusion="bert",
    down_projections=_BERT_DOWN,
)

_ROBERTA = ModelFamily(
    model_type="roberta",
    model_class="RobertaModel",
    tokenizer="byte-level BPE",
    token_type_ids=True,
    pooler=True,
    positions="after_padding",
    fusion="bert",
    down_projections=_BERT_DOWN,
)

FAMILIES: Mapping[str, ModelFamily] = MappingProxyType(
    {
        family.model_type: family
        for family in (
            BERT,
            _ROBERTA,
            replace(
                _ROBERTA, model_type="xlm-roberta", model_class="XLMRobertaModel", tokenizer="SentencePiece Unigram"
            ),
            ModelFamily(
                model_type="distilbert",
                model_class="DistilBertModel",
                tokenizer="WordPiece",
                token_type_ids=False,
                pooler=False,
                positions="absolute",
                fusion="bert",
                down_projections=r"/transformer/layer\.\d+/ffn/lin2/MatMul$",
            ),
            ModelFamily(
                model_type="albert",
                model_class="AlbertModel",
                tokenizer="SentencePiece Unigram",
                token_type_ids=True,
                pooler=True,
                positions="absolute",
                fusion="bert",
                # one shared layer, called once per layer: its calls are ffn_output, ffn_output_1, ... in graph order
                down_projections=r"/albert_layers\.\d+/ffn_output(_\d+)?/MatMul$",
            ),
            replace(BERT, model_type="electra", model_class="ElectraModel", pooler=False),
            replace(
                _ROBERTA, model_type="mpnet", model_class="MPNetModel", tokenizer="WordPiece", token_type_ids=False
            ),
            ModelFamily(
                model_type="deberta-v2",
                model_class="DebertaV2Model",
                tokenizer="SentencePiece Unigram",
                token_type_ids=True,
                pooler=False,
                positions="relative",
                fusion="bert",
                down_projections=_BERT_DOWN,
            ),
            ModelFamily(
                model_type="modernbert",
                model_class="ModernBertModel",
                tokenizer="byte-level BPE",
                token_type_ids=False,
                pooler=False,
                positions="rotary",
                fusion="bert",
                down_projections=r"/layers\.\d+/mlp/Wo/MatMul$",
            ),
        )
    }
)


def family(model_type: str) -> ModelFamily:
    """The family of a transformers ``model_type``, or an error naming the supported ones."""
    found = FAMILIES.get(model_type)
    if found is None:
        raise InvalidValueError(
            f"model_type {model_type!r} is not a family bert-onnx exports; supported: {', '.join(FAMILIES)}"
        )
    return found
