"""Loading a BertModel and tracing it into an ONNX graph with every output named."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from bert_onnx import interface
from bert_onnx.export.errors import ExportError

DEFAULT_OPSET = 17
# Opsets the tests export and check; 17 is the first with a LayerNormalization op.
SUPPORTED_OPSETS = range(14, 21)


class AllOutputs(torch.nn.Module):
    """BertModel returning (last_hidden_state, pooler_output, *hidden_states) as a flat tuple, in graph order."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=True,
            return_dict=True,
        )
        return (out.last_hidden_state, out.pooler_output, *out.hidden_states)


def load_model(path: Path) -> tuple[Any, list[str]]:
    """The checkpoint's BertModel in fp32 eval mode with eager attention, plus notes for the manifest.

    Eager attention because ONNX Runtime's transformer optimizer cannot fuse the SDPA export. Weights load from
    safetensors when the folder has them, never with remote code. A missing pooler is allowed (noted); any
    other missing weight is an error, since the outputs would be random.
    """
    from transformers import AutoConfig, BertModel

    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    if config.model_type != "bert":
        raise ExportError(f"{path}: model_type is {config.model_type!r}; bert-onnx exports BERT checkpoints")
    loaded: Any = BertModel.from_pretrained(
        path,
        attn_implementation="eager",
        dtype=torch.float32,
        output_loading_info=True,
        trust_remote_code=False,
    )
    model, info = loaded
    missing = sorted(info.get("missing_keys", ()))
    pooler_missing = [k for k in missing if k.startswith("pooler.")]
    others = [k for k in missing if not k.startswith("pooler.")]
    if others:
        raise ExportError(f"{path}: checkpoint lacks encoder weights {others[:5]} (and {max(0, len(others) - 5)} more)")
    notes = []
    if pooler_missing:
        notes.append(
            "The checkpoint has no pooler weights: pooler_output comes from randomly initialised weights "
            "and means nothing. Use pooling='cls' or 'mean'."
        )
    return model.eval(), notes


def example_inputs(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trace inputs with a padded row and a segment-1 span, so no mask or segment branch is traced away."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, vocab_size, (2, 8), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[0, 4:] = 1
    return input_ids, attention_mask, token_type_ids


def export_graph(model: Any, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Trace ``model`` to ``path`` with inputs/outputs named and axes declared as in :mod:`bert_onnx.interface`."""
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(
            f"opset={opset} is not supported; choose {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
        )
    num_layers = int(model.config.num_hidden_layers)
    wrapper = AllOutputs(model).eval()  # eval on the wrapper too: export would otherwise trace dropout
    args = example_inputs(int(model.config.vocab_size))
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated but is the one that gives a graph ORT's optimizer can fuse;
        # its tracer warnings concern shape arithmetic that is constant for BERT.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=list(interface.INPUT_NAMES),
            output_names=list(interface.output_names(num_layers)),
            dynamic_axes={**interface.input_axes(), **interface.output_axes(num_layers)},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(path))
