"""``EmbedRecipe``: how texts become vectors, described once and validated once.

``Encoder.embed``, ``bert-onnx embed`` (both engines), Ray's ``RayEmbedder`` and a resumable job's fingerprint all
read this one object, so no caller can drop a field on the way (as ``--no-truncation`` once was with Ray).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from bert_onnx.errors import InvalidValueError
from bert_onnx.runtime.pooling import COMBINES, POOLINGS, Pooling


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidValueError(f"{name}={value!r} must be a positive int")


@dataclass(frozen=True)
class EmbedRecipe:
    """One vector per text: which states, how pooled and combined, and how texts are cut and batched.

    ``pooling``: "cls" (the [CLS] vector), "pooler" (``pooler_output``) or "mean" (average over real tokens).
    ``layers``: hidden-state indices to pool instead of ``last_hidden_state`` (0 = embeddings, negative counts from
    the end: ``(-4, -3, -2, -1)`` is the last four); ``combine`` joins them, "concat" or "mean". ``normalize``
    scales each vector to unit length. ``max_length`` caps tokens per text (``None``: the model's limit);
    ``truncation=False`` makes a longer text an error instead of cutting it. ``batch_size`` and ``max_tokens`` bound
    a batch's texts and padded tokens. Hashable; ``to_dict``/``from_dict`` round-trip through JSON.
    """

    pooling: str = "cls"
    layers: tuple[int, ...] | None = None
    combine: str = "concat"
    normalize: bool = False
    max_length: int | None = None
    truncation: bool = True
    batch_size: int = 32
    max_tokens: int = 8192

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise InvalidValueError(f"pooling={self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.combine not in COMBINES:
            raise InvalidValueError(f"combine={self.combine!r} is not one of {', '.join(COMBINES)}")
        layers: Any = self.layers
        if layers is not None:
            if isinstance(layers, int | np.integer) and not isinstance(layers, bool):
                layers = (int(layers),)
            if isinstance(layers, str) or not isinstance(layers, Sequence) or len(layers) == 0:
                raise InvalidValueError(f"layers={self.layers!r} must be an int or a non-empty sequence of ints")
            for layer in layers:
                if not isinstance(layer, int | np.integer) or isinstance(layer, bool):
                    raise InvalidValueError(f"layers contains {layer!r}; hidden-state indices are ints")
            if self.pooling == "pooler":
                raise InvalidValueError(
                    "pooling='pooler' reads pooler_output (from the last layer); it takes no layers"
                )
            object.__setattr__(self, "layers", tuple(int(layer) for layer in layers))
        for name in ("normalize", "truncation"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise InvalidValueError(f"{name}={getattr(self, name)!r} must be True or False")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.max_length is not None and (
            not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 2
        ):
            raise InvalidValueError(
                f"max_length={self.max_length!r} must be an int >= 2 (room for [CLS] and [SEP]) or None"
            )
        _positive_int("batch_size", self.batch_size)
        floor = self.max_length or 2
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < floor:
            raise InvalidValueError(f"max_tokens={self.max_tokens!r} must be an int >= max_length ({floor})")

    def pooling_for(self, num_layers: int) -> Pooling:
        """The pooling step for a model with ``num_layers`` layers (raises if a layer is out of its range)."""
        return Pooling.create(self.pooling, self.layers, self.combine, self.normalize, num_layers)

    def dim(self, hidden_size: int) -> int:
        """Length of each vector for a model of ``hidden_size``."""
        if self.layers is not None and self.combine == "concat":
            return hidden_size * len(self.layers)
        return hidden_size

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = None if self.layers is None else list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedRecipe:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidValueError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
        return cls(**data)
