"""Turning token vectors into one vector per text: which outputs to fetch, how to pool, how to combine layers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bert_onnx import interface
from bert_onnx.errors import InvalidValueError

POOLINGS: tuple[str, ...] = ("cls", "pooler", "mean")
COMBINES: tuple[str, ...] = ("concat", "mean")


@dataclass(frozen=True)
class Pooling:
    """The pooling step of an ``EmbedRecipe`` (which validates the fields), for a model with a known layer count:
    ``layers`` resolved to hidden-state indices 0..N, or ``None`` for ``last_hidden_state``."""

    pooling: str
    layers: tuple[int, ...] | None
    combine: str
    normalize: bool

    @classmethod
    def create(
        cls,
        pooling: str,
        layers: Sequence[int] | None,
        combine: str,
        normalize: bool,
        num_layers: int,
    ) -> Pooling:
        """Resolve negative ``layers`` (counted from the end) and check them against ``num_layers``."""
        if layers is None:
            return cls(pooling, None, combine, normalize)
        resolved = []
        for layer in layers:
            index = layer + num_layers + 1 if layer < 0 else layer
            if not 0 <= index <= num_layers:
                raise InvalidValueError(
                    f"layer {layer} is out of range: this model has hidden states 0..{num_layers} "
                    f"(or -{num_layers + 1}..-1)"
                )
            resolved.append(index)
        return cls(pooling, tuple(resolved), combine, normalize)

    @property
    def fetch(self) -> tuple[str, ...]:
        """The graph outputs this recipe needs, and no others."""
        if self.pooling == "pooler":
            return (interface.POOLER_OUTPUT,)
        if self.layers is None:
            return (interface.LAST_HIDDEN_STATE,)
        return tuple(dict.fromkeys(interface.hidden_state_name(i) for i in self.layers))

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
