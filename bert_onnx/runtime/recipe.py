"""What a vector is (:class:`EmbedRecipe`) and how texts are batched (:class:`Batching`): two ideas, two objects.

A recipe decides the numbers, so it is what a resumable job's fingerprint records; batching decides only speed and
memory (a text's vector does not depend on its batch), so a job may resume with other batch sizes. ``Encoder.embed``,
``bert-onnx embed`` (both engines), ``bert-onnx serve``, Ray's ``RayEmbedder`` and resumable jobs all read these
objects, validated once here.

A model folder may carry a recipe of its own (read from the checkpoint's sentence-transformers files at export,
recorded in its manifest as a :class:`~bert_onnx.manifest.RecipeRecord`); :func:`recipe_for` turns that record and
a caller's explicit choices into the recipe to run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from bert_onnx._checks import check_bool, check_choice, check_int, check_optional_int, is_int
from bert_onnx.errors import InvalidTypeError, InvalidValueError
from bert_onnx.manifest import RecipeRecord
from bert_onnx.runtime.pooling import COMBINES, POOLER, Pooling, check_pooling

DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_TOKENS = 8192


class RecipeNotUnderstoodError(InvalidValueError):
    """The folder's own recipe was not understood at export, and the caller named no recipe of its own."""


@dataclass(frozen=True)
class EmbedRecipe:
    """One vector per text: which states, how pooled, combined, projected, cut and scaled, and which tokens.

    ``pooling``: "cls" (the [CLS] vector), "pooler" (``pooler_output``), "mean", "max", "mean_sqrt_len_tokens",
    "weightedmean" or "lasttoken" (sentence-transformers' modes, the same arithmetic), or a tuple of token modes
    whose vectors are concatenated. ``layers``: hidden-state indices to pool instead of ``last_hidden_state``
    (0 = embeddings, negative counts from the end: ``(-4, -3, -2, -1)`` is the last four); ``combine`` joins them,
    "concat" or "mean". ``dense``: names of the folder's Dense layers applied after pooling, in order.
    ``dimensions``: keep the first N values (Matryoshka), then ``normalize`` scales each vector to unit length.
    ``max_length`` caps tokens per text, the prompt's included (``None``: the model's limit); ``truncation=False``
    makes a longer text an error instead of cutting it. ``prompt`` is prepended to every text; with
    ``include_prompt=False`` its tokens are left out of pooling. Hashable; ``to_dict``/``from_dict`` round-trip
    through JSON.
    """

    pooling: str | tuple[str, ...] = "cls"
    layers: tuple[int, ...] | None = None
    combine: str = "concat"
    normalize: bool = False
    max_length: int | None = None
    truncation: bool = True
    prompt: str | None = None
    include_prompt: bool = True
    dense: tuple[str, ...] = ()
    dimensions: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pooling", check_pooling(self.pooling))
        check_choice("combine", self.combine, COMBINES)
        if self.layers is not None:
            object.__setattr__(self, "layers", _check_layers(self.layers))
            if self.pooling == POOLER:
                raise InvalidValueError(
                    "pooling='pooler' reads pooler_output (from the last layer); it takes no layers"
                )
        for name in ("normalize", "truncation", "include_prompt"):
            object.__setattr__(self, name, check_bool(name, getattr(self, name)))
        hint = "room for [CLS] and [SEP]"
        object.__setattr__(self, "max_length", check_optional_int("max_length", self.max_length, 2, hint=hint))
        object.__setattr__(self, "dimensions", check_optional_int("dimensions", self.dimensions, 1))
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise InvalidTypeError(f"prompt={self.prompt!r} must be a string or None")
        if self.prompt == "":
            object.__setattr__(self, "prompt", None)  # as sentence-transformers: an empty prompt is no prompt
        dense = self.dense
        if isinstance(dense, str) or not isinstance(dense, Sequence):
            raise InvalidValueError(f"dense={dense!r} must be a sequence of the folder's dense layer names")
        if not all(isinstance(name, str) for name in dense):
            raise InvalidValueError(f"dense={dense!r} must hold layer names (strings)")
        object.__setattr__(self, "dense", tuple(dense))
        if self.dense and self.pooling == POOLER:
            raise InvalidValueError("pooling='pooler' takes no dense layers")

    @property
    def modes(self) -> tuple[str, ...]:
        return (self.pooling,) if isinstance(self.pooling, str) else self.pooling

    def pooling_for(self, num_layers: int) -> Pooling:
        """The vector step for a model with ``num_layers`` layers (raises if a layer is out of its range).

        A recipe with dense layers, or a prompt left out of pooling, needs the folder's weights and tokenizer:
        ``Encoder.pooling_for(recipe)`` builds those."""
        if self.dense or (self.prompt is not None and not self.include_prompt):
            raise InvalidValueError(
                "this recipe needs the model folder (dense layers or a prompt left out of "
                "pooling): use Encoder.pooling_for(recipe)"
            )
        return Pooling.create(self.modes, self.layers, self.combine, self.normalize, num_layers, (), self.dimensions)

    def dim(self, hidden_size: int) -> int:
        """Length of each vector for a model of ``hidden_size`` (without dense layers; else ``Encoder.dim``)."""
        if self.dense:
            raise InvalidValueError("the length of a vector after dense layers is the folder's: use Encoder.dim")
        return Pooling(self.modes, self.layers, self.combine, self.normalize, (), self.dimensions).dim(hidden_size)

    def replace(self, **changes: Any) -> EmbedRecipe:
        """This recipe with ``changes`` (validated like a new one)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["pooling"] = self.pooling if isinstance(self.pooling, str) else list(self.pooling)
        data["layers"] = None if self.layers is None else list(self.layers)
        data["dense"] = list(self.dense)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedRecipe:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidValueError(
                f"unknown recipe field(s): {', '.join(sorted(unknown))} (fields: {', '.join(sorted(known))})"
            )
        return cls(**data)


def _check_layers(layers: Any) -> tuple[int, ...]:
    if is_int(layers):
        layers = (int(layers),)
    if isinstance(layers, str) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise InvalidValueError(f"layers={layers!r} must be an int or a non-empty sequence of ints")
    for layer in layers:
        if not is_int(layer):
            raise InvalidValueError(f"layers contains {layer!r}; hidden-state indices are ints")
    return tuple(int(layer) for layer in layers)


@dataclass(frozen=True)
class Batching:
    """How many texts share one model call: at most ``batch_size`` texts and ``max_tokens`` padded tokens (a text
    longer than the budget runs alone). Changes speed and memory, never a vector."""

    batch_size: int = DEFAULT_BATCH_SIZE
    max_tokens: int = DEFAULT_MAX_TOKENS

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size, 1))
        if not is_int(self.max_tokens) or int(self.max_tokens) < 2:
            raise InvalidValueError(f"max_tokens={self.max_tokens!r} must be an int >= max_length (and >= 2)")
        object.__setattr__(self, "max_tokens", int(self.max_tokens))

    def check_length(self, max_length: int) -> None:
        """Refuse a token budget below one text of ``max_length`` tokens."""
        if self.max_tokens < max_length:
            raise InvalidValueError(f"max_tokens={self.max_tokens!r} must be an int >= max_length ({max_length})")


# The recipe fields a caller may set by name over a folder's recipe (``dense`` is the folder's own).
OVERRIDES: tuple[str, ...] = (
    "pooling",
    "layers",
    "combine",
    "normalize",
    "max_length",
    "truncation",
    "prompt",
    "include_prompt",
    "dimensions",
)


def folder_recipe(record: RecipeRecord, where: str = "this model folder") -> EmbedRecipe:
    """The recipe a folder carries: its own, or ``EmbedRecipe()`` when it has none; raises
    :class:`RecipeNotUnderstoodError` when the export could not understand it."""
    if not record.carried:
        return EmbedRecipe()
    if not record.understood:
        raise RecipeNotUnderstoodError(
            f"{where} carries a {record.origin} recipe that was not understood at export "
            f"({'; '.join(record.problems)}), so no default recipe applies; name one (pooling, normalize, "
            "max_length, ...) to embed with it anyway"
        )
    try:
        return EmbedRecipe.from_dict(record.recipe)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"{where}: its manifest's recipe is not valid ({exc})") from exc


def prompt_named(record: RecipeRecord, name: str) -> str:
    """The text of the folder's prompt ``name``."""
    if not isinstance(name, str) or name not in record.prompts:
        known = ", ".join(repr(p) for p in record.prompts) or "none"
        raise InvalidValueError(f"prompt_name={name!r} is not one of this model's prompts ({known})")
    return record.prompts[name]


def recipe_for(record: RecipeRecord, where: str = "this model folder", **given: Any) -> EmbedRecipe:
    """The recipe to run: the folder's (:func:`folder_recipe`) with each field of ``given`` that is not ``None``
    in place of its own. ``prompt_name`` names one of the folder's prompts (instead of ``prompt``). When the
    folder's recipe was not understood, named fields apply over ``EmbedRecipe()``; naming none raises."""
    unknown = set(given) - {*OVERRIDES, "prompt_name"}
    if unknown:
        raise InvalidTypeError(
            f"unknown recipe field(s): {', '.join(sorted(unknown))} (fields: {', '.join(OVERRIDES)}, prompt_name)"
        )
    changes = {k: v for k, v in given.items() if v is not None}
    name = changes.pop("prompt_name", None)
    if name is not None:
        if "prompt" in changes:
            raise InvalidValueError("pass prompt or prompt_name, not both")
        changes["prompt"] = prompt_named(record, name)
    if not changes:
        return folder_recipe(record, where)
    base = folder_recipe(record, where) if record.understood else EmbedRecipe()
    return base.replace(**changes)
