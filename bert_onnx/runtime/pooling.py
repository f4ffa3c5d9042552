"""Turning token vectors into one vector per text: which outputs to fetch, how to pool, how to combine layers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bert_onnx import interface

POOLINGS: tuple[str, ...] = ("cls", "pooler", "mean")
COMBINES: tuple[str, ...] = ("concat", "mean")


@dataclass(frozen=True)
class Pooling:
    """A validated embedding recipe for a model with ``num_layers`` encoder layers.

    ``layers`` are hidden-state indices (0 = embeddings, N = last layer; negative counts from the end, so
    ``(-4, -3, -2, -1)`` is the last four) or ``None`` for ``last_hidden_state``.
    """

    pooling: str
    layers: tuple[int, ...] | None
    combine: str
    normalize: bool

    @classmethod
    def create(
        cls,
        pooling: str,
        layers: int | Sequence[int] | None,
        combine: str,
        normalize: bool,
        num_layers: int,
    ) -> Pooling:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {', '.join(POOLINGS)}")
        if combine not in COMBINES:
            raise ValueError(f"combine={combine!r} is not one of {', '.join(COMBINES)}")
        if layers is None:
            return cls(pooling, None, combine, bool(normalize))
        if pooling == "pooler":
            raise ValueError("pooling='pooler' reads pooler_output (from the last layer); it takes no layers")
        if isinstance(layers, int | np.integer):
            layers = [int(layers)]
        if isinstance(layers, str) or not isinstance(layers, Sequence) or len(layers) == 0:
            raise ValueError(f"layers={layers!r} must be an int or a non-empty sequence of ints")
        resolved = []
        for layer in layers:
            if not isinstance(layer, int | np.integer) or isinstance(layer, bool):
                raise ValueError(f"layers contains {layer!r}; hidden-state indices are ints")
            index = int(layer) + num_layers + 1 if layer < 0 else int(layer)
            if not 0 <= index <= num_layers:
                raise ValueError(
                    f"layer {layer} is out of range: this model has hidden states 0..{num_layers} "
                    f"(or -{num_layers + 1}..-1)"
                )
            resolved.append(index)
        return cls(pooling, tuple(resolved), combine, bool(normalize))

    @property
    def fetch(self) -> tuple[str, ...]:
        """The graph outputs this recipe needs, and no others."""
        if self.pooling == "pooler":
            return (interface.POOLER_OUTPUT,)
        if self.layers is None:
            return (interface.LAST_HIDDEN_STATE,)
        return tuple(dict.fromkeys(interface.hidden_state_name(i) for i in self.layers))

    def dim(self, hidden_size: int) -> int:
        if self.layers is not None and self.combine == "concat":
            return hidden_size * len(self.layers)
        return hidden_size

    def __call__(self, outputs: dict[str, np.ndarray], attention_mask: np.ndarray) -> np.ndarray:
        """Pool one batch of fetched outputs into (batch, dim) float32."""
        if self.pooling == "pooler":
            vectors = outputs[interface.POOLER_OUTPUT]
        elif self.layers is None:
            vectors = _pool_tokens(self.pooling, outputs[interface.LAST_HIDDEN_STATE], attention_mask)
        else:
            pooled = [
                _pool_tokens(self.pooling, outputs[interface.hidden_state_name(i)], attention_mask) for i in self.layers
            ]
            vectors = np.concatenate(pooled, axis=-1) if self.combine == "concat" else np.mean(pooled, axis=0)
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.normalize:
            norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return vectors


def _pool_tokens(pooling: str, states: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    if pooling == "cls":
        return states[:, 0]  # (B, H): the [CLS] position
    weights = attention_mask.astype(states.dtype)[:, :, None]  # (B, T, 1)
    counts = np.maximum(weights.sum(axis=1), 1.0)  # (B, 1)
    return (states * weights).sum(axis=1) / counts
