"""Reading a checkpoint's sentence-transformers layout at export: the recipe its authors define for its vectors.

A sentence-transformers checkpoint lists its modules in ``modules.json``, in the order they run: the Transformer
(this BERT), a Pooling module (``1_Pooling/config.json``: modes and ``include_prompt``), optional Dense layers
(``N_Dense/config.json`` and weights) and an optional Normalize. ``sentence_bert_config.json`` holds the token
limit (``max_seq_length``, else the tokenizer's ``model_max_length``) and ``do_lower_case``;
``config_sentence_transformers.json`` the prompts, the default prompt, the similarity function and ``truncate_dim``.
:func:`read_layout` turns them into a :class:`~bert_onnx.manifest.RecipeRecord`, the Dense weights for
``recipe.npz``, and whether the tokenizer must lower-case first, matching how sentence-transformers 6 loads them.

What it does not understand (a custom module, a Dense layer before pooling, an unknown activation, a malformed
file) is refused with :class:`LayoutError`, naming the file and the module; with ``allow_unknown=True`` the folder
is exported with its recipe marked not understood instead, so nothing is applied silently. Reads JSON, safetensors
and (``weights_only``) ``pytorch_model.bin``; never imports or runs code from the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bert_onnx import interface
from bert_onnx._files import atomic_write, atomic_write_text
from bert_onnx.export.errors import ExportError
from bert_onnx.manifest import RecipeRecord
from bert_onnx.runtime.pooling import TOKEN_POOLINGS

MODULES_FILE = "modules.json"
TRANSFORMER_CONFIG = "sentence_bert_config.json"
MODEL_CONFIG = "config_sentence_transformers.json"
# sentence-transformers' legacy Pooling flags, in the order it concatenates their vectors.
LEGACY_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# torch activation classes (as Dense records them) -> the runtime's names (bert_onnx.runtime.pooling.ACTIVATIONS).
ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
}
KNOWN_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
# Transformer settings that change nothing for a BERT text model at these values.
_PLAIN_TRANSFORMER = {
    "transformer_task": "feature-extraction",
    "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
    "module_output_name": "token_embeddings",
    "query_length": None,
    "document_length": None,
    "query_expansion": None,
}
_EMPTY_KWARGS = ("model_args", "model_kwargs", "tokenizer_args", "processor_kwargs", "config_args", "config_kwargs")


class LayoutError(ExportError):
    """The checkpoint's sentence-transformers files are malformed, or hold something bert-onnx does not apply."""


@dataclass
class Layout:
    """What :func:`read_layout` found: the manifest's recipe record, the Dense weights, and the tokenizer change."""

    record: RecipeRecord = field(default_factory=RecipeRecord)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    lowercase: bool = False

    def write(self, folder: Path) -> tuple[str, ...]:
        """Write the Dense weights and lower-case the tokenizer in ``folder``; the files written (to checksum)."""
        if self.lowercase:
            _add_lowercase(folder / interface.TOKENIZER_FILE)
        if not self.weights:
            return ()

        def save(handle: Any) -> None:
            np.savez(handle, **self.weights)  # type: ignore[arg-type]  # numpy's stub types only the first

        atomic_write(folder / interface.RECIPE_WEIGHTS_FILE, save)
        return (interface.RECIPE_WEIGHTS_FILE,)


def _add_lowercase(path: Path) -> None:
    """Put a Lowercase normalizer first unless one is there, as sentence-transformers does for do_lower_case."""
    from tokenizers import Tokenizer
    from tokenizers.normalizers import Lowercase, Sequence

    tokenizer = Tokenizer.from_file(str(path))
    normalizer: Any = tokenizer.normalizer
    parts = list(normalizer) if isinstance(normalizer, Sequence) else [] if normalizer is None else [normalizer]  # type: ignore[call-overload]
    if any(isinstance(part, Lowercase) for part in parts):
        return
    tokenizer.normalizer = Sequence([Lowercase(), *parts])
    atomic_write_text(path, tokenizer.to_str(pretty=True))


class _Reader:
    """One pass over the layout, collecting problems instead of stopping at the first."""

    def __init__(self, root: Path, hidden_size: int, max_position: int, tokenizer_max_length: int | None) -> None:
        self.root = root
        self.hidden_size = hidden_size
        self.max_position = max_position
        self.tokenizer_max_length = tokenizer_max_length
        self.files: list[str] = []
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.weights: dict[str, np.ndarray] = {}
        self.dense: list[dict[str, Any]] = []
        self.recipe: dict[str, Any] = {}
        self.lowercase = False
        self.width = hidden_size  # the vectors' length so far: after pooling, after each Dense layer

    def json(self, relative: str, required: bool = True) -> Any:
        path = self.root / relative
        if not path.is_file():
            if required:
                self.problems.append(f"{relative}: missing")
            return None
        self.files.append(relative)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self.problems.append(f"{relative}: not valid JSON ({exc})")
            return None

    def modules(self) -> list[dict[str, Any]]:
        data = self.json(MODULES_FILE)
        if data is None:
            return []
        if not isinstance(data, list) or not data or not all(isinstance(m, dict) for m in data):
            self.problems.append(f"{MODULES_FILE}: expected a non-empty list of module objects")
            return []
        modules = []
        for index, module in enumerate(data):
            kind, path = module.get("type"), module.get("path")
            label = f"{MODULES_FILE}: module {index} ({module.get('name')!r}, type {kind!r})"
            if not isinstance(kind, str) or not isinstance(path, str) or "name" not in module:
                self.problems.append(f"{label}: needs a name, a path and a type")
                continue
            short = kind.rsplit(".", 1)[-1]
            if not kind.startswith("sentence_transformers.") or short not in KNOWN_MODULES:
                self.problems.append(
                    f"{label} is not a module bert-onnx applies (it applies {', '.join(KNOWN_MODULES)})"
                )
                continue
            if module.get("kwargs"):
                self.problems.append(f"{label} takes forward arguments {module['kwargs']!r}, which bert-onnx does not")
            if ".." in Path(path).parts or Path(path).is_absolute():
                self.problems.append(f"{label}: path {path!r} leaves the checkpoint folder")
                continue
            modules.append({"kind": short, "path": path, "label": label})
        return modules

    def order(self, modules: list[dict[str, Any]]) -> None:
        """Transformer, Pooling, Dense..., Normalize?: the order bert-onnx applies them in."""
        kinds = [m["kind"] for m in modules]
        expected = "Transformer, Pooling, then any Dense layers, then at most one Normalize"
        body = kinds[2:]
        dense_then_norm = body == ["Dense"] * body.count("Dense") + ["Normalize"] * body.count("Normalize")
        if kinds[:2] != ["Transformer", "Pooling"] or not dense_then_norm or body.count("Normalize") > 1:
            self.problems.append(f"{MODULES_FILE}: modules {kinds} are not in an order bert-onnx applies ({expected})")

    def transformer(self, module: dict[str, Any]) -> None:
        if module["path"] not in ("", "."):
            self.problems.append(
                f"{module['label']}: the Transformer lives in {module['path']}/, not in the checkpoint folder itself"
            )
            return
        config = self.json(TRANSFORMER_CONFIG, required=False) or {}
        if not isinstance(config, dict):
            self.problems.append(f"{TRANSFORMER_CONFIG}: expected a JSON object")
            return
        for key, value in config.items():
            if key in ("max_seq_length", "do_lower_case", "unpad_inputs"):
                continue
            if key in _EMPTY_KWARGS and not {k: v for k, v in (value or {}).items() if k != "trust_remote_code"}:
                continue
            if key in _PLAIN_TRANSFORMER and value == _PLAIN_TRANSFORMER[key]:
                continue
            if key == "processing_kwargs" and not value:
                continue
            self.problems.append(f"{TRANSFORMER_CONFIG}: {key}={value!r} is a setting bert-onnx does not apply")
        limit = config.get("max_seq_length")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 2):
            self.problems.append(f"{TRANSFORMER_CONFIG}: max_seq_length={limit!r} is not an int >= 2")
            limit = None
        if limit is None:
            limit = min(self.tokenizer_max_length or self.max_position, self.max_position)
        elif limit > self.max_position:
            self.notes.append(
                f"{TRANSFORMER_CONFIG}: max_seq_length {limit} is over the model's {self.max_position} positions; "
                f"texts are cut at {self.max_position}"
            )
            limit = self.max_position
        self.recipe["max_length"] = limit
        lower = config.get("do_lower_case", False)
        if not isinstance(lower, bool):
            self.problems.append(f"{TRANSFORMER_CONFIG}: do_lower_case={lower!r} is not true or false")
        self.lowercase = lower is True

    def module_config(self, module: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        """A module's ``config.json`` (its path in the checkpoint, and the object, or ``None`` if missing or not an
        object: a problem is recorded for the latter)."""
        relative = f"{module['path']}/config.json"
        config = self.json(relative)
        if not isinstance(config, dict):
            if config is not None:
                self.problems.append(f"{relative} ({module['label']}): expected a JSON object")
            return relative, None
        return relative, config

    def pooling(self, module: dict[str, Any]) -> None:
        relative, config = self.module_config(module)
        if config is None:
            return
        config = dict(config)
        legacy = [k for k in LEGACY_POOLING_FLAGS if k in config]
        modes: Any = config.pop("pooling_mode", None)
        if modes is None:
            modes = [LEGACY_POOLING_FLAGS[k] for k in LEGACY_POOLING_FLAGS if config.get(k) is True] or ["mean"]
        for key in legacy:
            config.pop(key)
        modes = [modes] if isinstance(modes, str) else modes
        if not isinstance(modes, list) or not modes or any(m not in TOKEN_POOLINGS for m in modes):
            self.problems.append(
                f"{relative}: pooling mode {modes!r} is not one of {', '.join(TOKEN_POOLINGS)} ({module['label']})"
            )
            return
        include = config.pop("include_prompt", True)
        width = config.pop("embedding_dimension", config.pop("word_embedding_dimension", self.hidden_size))
        if config:
            self.problems.append(f"{relative}: unknown setting(s) {', '.join(sorted(config))} ({module['label']})")
        if not isinstance(include, bool):
            self.problems.append(f"{relative}: include_prompt={include!r} is not true or false")
        if width != self.hidden_size:
            self.problems.append(
                f"{relative}: embedding_dimension {width!r} is not the model's hidden size {self.hidden_size}"
            )
        self.recipe["pooling"] = modes[0] if len(modes) == 1 else modes
        self.recipe["include_prompt"] = include is not False
        self.width = self.hidden_size * len(modes)

    def dense_layer(self, module: dict[str, Any]) -> None:
        relative, config = self.module_config(module)
        if config is None:
            return
        name, label = module["path"], module["label"]
        known = {
            "in_features",
            "out_features",
            "bias",
            "activation_function",
            "module_input_name",
            "module_output_name",
            "use_residual",
        }
        unknown = sorted(set(config) - known)
        # sentence-transformers falls back to Tanh for an activation it will not import: refuse instead.
        activation = ACTIVATIONS.get(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
        inputs, outputs = config.get("in_features"), config.get("out_features")
        routed = {config.get("module_input_name", "sentence_embedding"), config.get("module_output_name")}
        if unknown:
            self.problems.append(f"{relative}: unknown setting(s) {', '.join(unknown)} ({label})")
        if activation is None:
            self.problems.append(
                f"{relative}: activation {config.get('activation_function')!r} is not one bert-onnx applies "
                f"({', '.join(ACTIVATIONS)}) ({label})"
            )
        if routed - {"sentence_embedding", None}:
            self.problems.append(
                f"{relative}: a Dense layer on {sorted(routed - {None})} rather than the pooled "
                f"sentence embedding ({label})"
            )
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (inputs, outputs)):
            self.problems.append(f"{relative}: in_features/out_features {inputs!r}/{outputs!r} are not sizes")
            return
        if inputs != self.width:
            self.problems.append(f"{relative}: takes {inputs} values, but the vectors before it have {self.width}")
        residual = config.get("use_residual", False) is True
        state = self.dense_weights(module["path"], label)
        assert isinstance(inputs, int) and isinstance(outputs, int)
        expected: dict[str, tuple[int, ...]] = {"linear.weight": (outputs, inputs)}
        if config.get("bias", True):
            expected["linear.bias"] = (outputs,)
        if residual and inputs != outputs:
            expected["residual.weight"] = (outputs, inputs)
        for key, shape in expected.items():
            if state is not None and (key not in state or tuple(state[key].shape) != shape):
                found = None if key not in state else tuple(state[key].shape)
                self.problems.append(f"{module['path']}: weight {key} is {found}, expected shape {shape} ({label})")
                state = None
        self.width = outputs
        self.dense.append(
            {
                "name": name,
                "in_features": inputs,
                "out_features": outputs,
                "bias": "linear.bias" in expected,
                "activation": activation,
                "use_residual": residual,
            }
        )
        if state is not None:
            for key, target in (("linear.weight", "weight"), ("linear.bias", "bias"), ("residual.weight", "residual")):
                if key in expected:
                    self.weights[f"{name}.{target}"] = np.ascontiguousarray(state[key], dtype=np.float32)

    def dense_weights(self, folder: str, label: str) -> dict[str, np.ndarray] | None:
        safetensors, pickled = self.root / folder / "model.safetensors", self.root / folder / "pytorch_model.bin"
        try:
            if safetensors.is_file():
                from safetensors.numpy import load_file

                self.files.append(f"{folder}/model.safetensors")
                return dict(load_file(str(safetensors)))
            if pickled.is_file():
                import torch

                self.files.append(f"{folder}/pytorch_model.bin")
                state = torch.load(pickled, map_location="cpu", weights_only=True)
                return {k: v.float().numpy() for k, v in state.items()}
        except Exception as exc:  # any unreadable weights file: say which
            self.problems.append(f"{folder}: cannot read its weights ({type(exc).__name__}: {exc}) ({label})")
            return None
        self.problems.append(f"{folder}: no model.safetensors or pytorch_model.bin ({label})")
        return None

    def normalize(self, module: dict[str, Any]) -> None:
        config = self.json(f"{module['path']}/config.json", required=False) if module["path"] else None
        if isinstance(config, dict):
            routed = {config.get("module_input_name", "sentence_embedding"), config.get("module_output_name")}
            if routed - {"sentence_embedding", None}:
                self.problems.append(
                    f"{module['path']}/config.json: Normalize on {sorted(routed - {None})} rather "
                    f"than the sentence embedding ({module['label']})"
                )
        self.recipe["normalize"] = True

    def model_config(self) -> dict[str, Any]:
        """Prompts, default prompt, similarity and truncate_dim, as sentence-transformers 6 resolves them."""
        config = self.json(MODEL_CONFIG, required=False) or {}
        if not isinstance(config, dict):
            self.problems.append(f"{MODEL_CONFIG}: expected a JSON object")
            config = {}
        kind = config.get("model_type", "SentenceTransformer")
        if kind != "SentenceTransformer":
            self.problems.append(f"{MODEL_CONFIG}: model_type {kind!r} is not a SentenceTransformer (an embedder)")
        prompts = {"query": "", "document": "", **(config.get("prompts") or {})}  # its defaults, then the model's
        if not all(isinstance(k, str) and isinstance(v, str | None) for k, v in prompts.items()):
            self.problems.append(f"{MODEL_CONFIG}: prompts must map names to texts")
            prompts = {}
        prompts = {k: v or "" for k, v in prompts.items()}
        default = config.get("default_prompt_name")
        if default is not None and default not in prompts:
            self.problems.append(f"{MODEL_CONFIG}: default_prompt_name {default!r} is not among its prompts")
            default = None
        if default:
            self.recipe["prompt"] = prompts[default] or None
        dim = config.get("truncate_dim")
        width = self.width
        if dim is not None:
            if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= width:
                self.problems.append(f"{MODEL_CONFIG}: truncate_dim={dim!r} is not in [1, {width}]")
            else:
                self.recipe["dimensions"] = dim
        similarity = config.get("similarity_fn_name")
        return {
            "prompts": prompts,
            "default_prompt_name": default,
            "similarity_fn_name": similarity if isinstance(similarity, str) else None,
        }


def read_layout(
    checkpoint: Path,
    hidden_size: int,
    max_position: int,
    tokenizer_max_length: int | None,
    allow_unknown: bool = False,
) -> Layout:
    """The sentence-transformers recipe of ``checkpoint``, or an empty :class:`Layout` when it has no
    ``modules.json``. Raises :class:`LayoutError` listing every problem, unless ``allow_unknown``: then the record is
    marked not understood and lists them (and no weights or tokenizer change are kept)."""
    if not (checkpoint / MODULES_FILE).is_file():
        return Layout()
    reader = _Reader(checkpoint, hidden_size, max_position, tokenizer_max_length)
    modules = reader.modules()
    if modules and not reader.problems:
        reader.order(modules)
    steps = {
        "Transformer": reader.transformer,
        "Pooling": reader.pooling,
        "Dense": reader.dense_layer,
        "Normalize": reader.normalize,
    }
    if not reader.problems:
        for module in modules:
            steps[module["kind"]](module)
    extra = reader.model_config()
    labels = tuple(f"{m['path'] or '.'}: {m['kind']}" for m in modules)
    if reader.problems and not allow_unknown:
        raise LayoutError(
            f"{checkpoint}: its sentence-transformers recipe cannot be applied: {'; '.join(reader.problems)}. "
            "Export with --allow-unknown-modules (allow_unknown_modules=True) to keep the folder without it: its "
            "recipe is then marked not understood, and embedding asks for an explicit one"
        )
    understood = not reader.problems
    record = RecipeRecord(
        origin="sentence-transformers",
        understood=understood,
        recipe=reader.recipe if understood else {},
        dense=tuple(reader.dense) if understood else (),
        prompts=extra["prompts"],
        default_prompt_name=extra["default_prompt_name"],
        similarity_fn_name=extra["similarity_fn_name"],
        files=tuple(dict.fromkeys(reader.files)),
        modules=labels,
        problems=tuple(reader.problems),
        notes=tuple(reader.notes),
    )
    if understood and record.dense:
        record.recipe["dense"] = [d["name"] for d in record.dense]
    return Layout(record, reader.weights if understood else {}, reader.lowercase and understood)
