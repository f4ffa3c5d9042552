"""Loading a checkpoint of a listed family (:mod:`bert_onnx.families`) and tracing it into an ONNX graph with every
output named."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from bert_onnx import families, interface
from bert_onnx.errors import InvalidValueError
from bert_onnx.export.errors import ExportError
from bert_onnx.families import ModelFamily

DEFAULT_OPSET = 17
# Opsets the tests export and check; 17 is the first with a LayerNormalization op.
SUPPORTED_OPSETS = range(14, 21)


class AllOutputs(torch.nn.Module):
    """A family's base model returning (last_hidden_state, [pooler_output,] *hidden_states) as a flat tuple, in
    graph order, from the graph's inputs in graph order (:func:`graph_inputs`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.input_names = graph_inputs(model.config)
        self.pooler = family_of(model.config).pooler

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(
            **dict(zip(self.input_names, inputs, strict=True)),
            output_hidden_states=True,
            return_dict=True,
        )
        pooled = (out.pooler_output,) if self.pooler else ()
        return (out.last_hidden_state, *pooled, *out.hidden_states)


def family_of(config: Any) -> ModelFamily:
    return families.family(str(config.model_type))


def type_vocab_size(config: Any) -> int:
    """Segment types the checkpoint embeds (0 for families without segment embeddings)."""
    return int(getattr(config, "type_vocab_size", 0) or 0)


def graph_inputs(config: Any) -> tuple[str, ...]:
    """The graph's input names for a checkpoint's transformers ``config``, in graph order."""
    return family_of(config).graph_inputs(type_vocab_size(config))


def graph_outputs(config: Any) -> tuple[str, ...]:
    """The graph's output names for a checkpoint's transformers ``config``, in graph order."""
    return interface.output_names(int(config.num_hidden_layers), family_of(config).pooler)


def read_family(path: Path) -> ModelFamily:
    """The checkpoint's family, read from its config.json before transformers sees it.

    A checkpoint whose config or tokenizer config maps classes to its own code (``auto_map``) needs
    ``trust_remote_code``; bert-onnx never runs code from a checkpoint, so it is refused, saying so.
    """
    model_type = None
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ExportError(f"{file}: not valid JSON ({exc})") from exc
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if auto_map:
            raise ExportError(
                f"{file}: auto_map names code shipped with the checkpoint ({json.dumps(auto_map)[:200]}); this model "
                "needs remote code (trust_remote_code), and bert-onnx never runs code from a checkpoint. Supported "
                f"families: {', '.join(families.FAMILIES)}"
            )
        if name == "config.json":
            model_type = data.get("model_type") if isinstance(data, dict) else None
    try:
        return families.family(str(model_type))
    except InvalidValueError as exc:
        raise ExportError(f"{path}: {exc}") from exc


def load_model(path: Path) -> tuple[Any, list[str]]:
    """The checkpoint's base model (its family's transformers class) in fp32 eval mode with eager attention, plus
    notes for the manifest.

    Eager attention because ONNX Runtime's transformer optimizer cannot fuse the SDPA export. Weights load from
    safetensors when the folder has them, never with remote code. A missing pooler is allowed (noted); any
    other missing weight is an error, since the outputs would be random; so is a weights file that cannot be read
    (truncated by an interrupted copy or download).
    """
    import transformers
    from safetensors import SafetensorError

    family = read_family(path)
    model_class = getattr(transformers, family.model_class)
    try:
        loaded: Any = model_class.from_pretrained(
            path,
            attn_implementation="eager",
            dtype=torch.float32,
            output_loading_info=True,
            trust_remote_code=False,
        )
    except SafetensorError as exc:
        weights = ", ".join(str(f) for f in sorted(path.glob("*.safetensors"))) or f"the weights in {path}"
        raise ExportError(
            f"{weights}: cannot be read ({exc}); the file is damaged or incomplete (an interrupted copy or "
            "download?): copy or download it again"
        ) from exc
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


def example_inputs(config: Any) -> tuple[torch.Tensor, ...]:
    """Trace inputs, in graph order, with a padded row and (where the graph takes segment ids) a segment-1 span, so
    no mask or segment branch is traced away."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, int(config.vocab_size), (2, 8), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[0, 4:] = 1
    by_name = {
        families.INPUT_IDS: input_ids,
        families.ATTENTION_MASK: attention_mask,
        families.TOKEN_TYPE_IDS: token_type_ids,
    }
    return tuple(by_name[name] for name in graph_inputs(config))


def export_graph(model: Any, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Trace ``model`` to ``path`` with inputs/outputs named and axes declared as in :mod:`bert_onnx.interface`."""
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(
            f"opset={opset} is not supported; choose {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
        )
    config = model.config
    num_layers = int(config.num_hidden_layers)
    pooler = family_of(config).pooler
    wrapper = AllOutputs(model).eval()  # eval on the wrapper too: export would otherwise trace dropout
    args = example_inputs(config)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated but is the one that gives a graph ORT's optimizer can fuse;
        # its tracer warnings concern shape arithmetic that is constant for these models (the parity check that
        # follows, on rows of many lengths, would catch one that is not).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=list(wrapper.input_names),
            output_names=list(interface.output_names(num_layers, pooler)),
            dynamic_axes={**interface.input_axes(wrapper.input_names), **interface.output_axes(num_layers, pooler)},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(path))
