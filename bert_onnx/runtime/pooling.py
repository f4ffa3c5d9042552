"""Turning token vectors into one vector per text: which outputs to fetch, how to pool, combine, project and cut.

Pooling modes are a registry (:data:`TOKEN_POOLINGS`): one function per mode, the same arithmetic as
sentence-transformers' ``Pooling`` module (``sentence_transformers/sentence_transformer/modules/pooling.py``), so
a model's own recipe gives its own vectors. ``"pooler"`` is not a token pooling (it reads BERT's ``pooler_output``)
and is handled beside them. A name outside the registry raises; nothing falls through to a default.

To add a mode: one function here with the signature of :data:`TokenPooling`, one entry in :data:`TOKEN_POOLINGS`,
and its parity test against sentence-transformers in ``tests/test_st_recipe.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bert_onnx import interface
from bert_onnx.errors import InvalidValueError

# (states (B, T, H) float32, mask (B, T) of 0/1: the tokens to pool) -> (B, H) float32. The batch is right-padded,
# so position 0 is a row's first token; the mask is already without the prompt's tokens where those are excluded.
TokenPooling = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _cls(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # The first pooled token: [CLS], or the first token after an excluded prompt (a row with none pooled: 0).
    first = mask.argmax(axis=1)  # (B,)
    return states[np.arange(states.shape[0]), first]


def _masked_sum(states: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    weights = mask.astype(np.float32)[:, :, None]  # (B, T, 1)
    return (states * weights).sum(axis=1), weights.sum(axis=1)  # (B, H), (B, 1)


def _mean(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    total, count = _masked_sum(states, mask)
    return total / np.maximum(count, np.float32(1e-9))


def _mean_sqrt_len(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    total, count = _masked_sum(states, mask)
    return total / np.sqrt(np.maximum(count, np.float32(1e-9)))


def _max(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # Tokens outside the mask never win (a row with none pooled gives -inf, as in sentence-transformers).
    return np.where(mask[:, :, None] == 0, np.float32(-np.inf), states).max(axis=1)


def _weighted_mean(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # Token t (0-based) weighs t + 1: later tokens count more. An excluded prompt keeps the positions it shifted.
    positions = np.arange(1, states.shape[1] + 1, dtype=np.float32)[None, :, None]  # (1, T, 1)
    weights = mask.astype(np.float32)[:, :, None] * positions  # (B, T, 1)
    return (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), np.float32(1e-9))


def _last_token(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # The last pooled token ([SEP] for BERT); a row with none pooled gives zeros.
    width = states.shape[1]
    last = width - 1 - mask[:, ::-1].argmax(axis=1)  # (B,)
    picked = states[np.arange(states.shape[0]), last]
    return picked * mask[np.arange(states.shape[0]), last].astype(np.float32)[:, None]


TOKEN_POOLINGS: Mapping[str, TokenPooling] = {
    "cls": _cls,
    "mean": _mean,
    "max": _max,
    "mean_sqrt_len_tokens": _mean_sqrt_len,
    "weightedmean": _weighted_mean,
    "lasttoken": _last_token,
}
POOLER = "pooler"  # BERT's pooler_output: tanh(dense([CLS])), computed in the graph
POOLINGS: tuple[str, ...] = ("cls", POOLER, *(name for name in TOKEN_POOLINGS if name != "cls"))
COMBINES: tuple[str, ...] = ("concat", "mean")

# Activations of a Dense layer, by the name the manifest records (the export maps torch's class names to these).
ACTIVATIONS: Mapping[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, np.float32(0)),
    "sigmoid": lambda x: np.float32(1) / (np.float32(1) + np.exp(-x)),
}


@dataclass(frozen=True, eq=False)
class DenseLayer:
    """A linear layer after pooling, as sentence-transformers' ``Dense``: ``activation(x @ weight.T + bias)``, plus
    ``x`` (or ``x @ residual.T``) when the layer has a residual connection. Compared and hashed by identity: an
    ``Encoder`` loads each of its layers once."""

    name: str
    weight: np.ndarray  # (out, in) float32
    bias: np.ndarray | None  # (out,) float32
    activation: str
    use_residual: bool = False
    residual: np.ndarray | None = None  # (out, in) projection when in != out

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise InvalidValueError(
                f"dense layer {self.name}: activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}"
            )

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = x @ self.weight.T  # (B, in) @ (in, out) -> (B, out)
        if self.bias is not None:
            out = out + self.bias
        out = ACTIVATIONS[self.activation](out)
        if self.use_residual:
            out = out + (x if self.residual is None else x @ self.residual.T)
        return np.asarray(out, dtype=np.float32)


def check_pooling(value: object) -> str | tuple[str, ...]:
    """A pooling mode, or a tuple of token-pooling modes whose vectors are concatenated in that order (as
    sentence-transformers concatenates several modes); a list becomes a tuple, a tuple of one its name."""
    if isinstance(value, list | tuple) and not isinstance(value, str):
        modes = tuple(value)
        if len(modes) == 1:
            return check_pooling(modes[0])
        if not modes:
            raise InvalidValueError("pooling=() names no mode")
        for mode in modes:
            if not isinstance(mode, str) or mode not in TOKEN_POOLINGS:
                raise InvalidValueError(
                    f"pooling contains {mode!r}; modes pooled together are {', '.join(TOKEN_POOLINGS)}"
                )
        return modes
    if not isinstance(value, str) or value not in POOLINGS:
        raise InvalidValueError(f"pooling={value!r} is not one of {', '.join(POOLINGS)}")
    return value


def _normalized(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


class UnpooledTextError(InvalidValueError):
    """A text left with no token to pool (:meth:`Pooling.check_tokens`); ``index`` is its position."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Pooling:
    """The vector step of an ``EmbedRecipe`` (which validates the fields) for one model: pool each of ``layers``
    (hidden-state indices 0..N, or ``None`` for ``last_hidden_state``) by ``modes``, join the layers by ``combine``,
    apply ``dense`` in order, keep the first ``dimensions`` values, and scale to unit length if ``normalize``.
    ``prompt_length`` tokens at the start of every row (a prompt's) are left out of pooling; a row left with no token
    pools as sentence-transformers pools it (max: -inf, mean: zeros), so a caller that knows which texts it pools
    refuses those first (:meth:`unpooled`, :meth:`check_tokens`). Hashable: the server merges rows of equal steps
    into one call."""

    modes: tuple[str, ...]
    layers: tuple[int, ...] | None
    combine: str
    normalize: bool
    dense: tuple[DenseLayer, ...] = ()
    dimensions: int | None = None
    prompt_length: int = 0

    @classmethod
    def create(
        cls,
        pooling: str | Sequence[str],
        layers: Sequence[int] | None,
        combine: str,
        normalize: bool,
        num_layers: int,
        dense: Sequence[DenseLayer] = (),
        dimensions: int | None = None,
        prompt_length: int = 0,
    ) -> Pooling:
        """Resolve negative ``layers`` (counted from the end) and check them against ``num_layers``."""
        modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
        resolved: list[int] | None = None
        if layers is not None:
            resolved = []
            for layer in layers:
                index = layer + num_layers + 1 if layer < 0 else layer
                if not 0 <= index <= num_layers:
                    raise InvalidValueError(
                        f"layer {layer} is out of range: this model has hidden states 0..{num_layers} "
                        f"(or -{num_layers + 1}..-1)"
                    )
                resolved.append(index)
        return cls(
            modes,
            None if resolved is None else tuple(resolved),
            combine,
            normalize,
            tuple(dense),
            dimensions,
            prompt_length,
        )

    def unpooled(self, lengths: Sequence[int]) -> list[int]:
        """The positions in ``lengths`` (texts' token counts with the prompt, [CLS] and [SEP] included) of the texts
        that would have no token to pool. Only a prompt left out of pooling can take every token: where the prompt
        ends inside a word the text completes ("aac" + "hen" is one word piece, "aachen"), the text's tokens merge
        into the prompt's, and so may its [SEP]. ``pooler`` reads no token vector, so it has none."""
        if not self.prompt_length or self.modes == (POOLER,):
            return []
        return [index for index, length in enumerate(lengths) if length <= self.prompt_length]

    def check_tokens(self, lengths: Sequence[int], first_index: int = 0) -> None:
        """Refuse the texts :meth:`unpooled` finds (:class:`UnpooledTextError`), naming the first as
        ``texts[first_index + position]``."""
        empty = self.unpooled(lengths)
        if empty:
            first = empty[0]
            more = f" (and {len(empty) - 1} other text(s))" if len(empty) > 1 else ""
            raise UnpooledTextError(
                first_index + first,
                f"texts[{first_index + first}]{more} leaves no token to pool: its tokens merged into the prompt's (the "
                f"prompt and the text tokenize to {lengths[first]} tokens, all among the prompt's first "
                f"{self.prompt_length}, which include_prompt=False leaves out); end the prompt with a space or "
                "punctuation, or pass include_prompt=True",
            )

    @property
    def pooling(self) -> str | tuple[str, ...]:
        return self.modes[0] if len(self.modes) == 1 else self.modes

    @property
    def fetch(self) -> tuple[str, ...]:
        """The graph outputs this recipe needs, and no others."""
        if self.modes == (POOLER,):
            return (interface.POOLER_OUTPUT,)
        if self.layers is None:
            return (interface.LAST_HIDDEN_STATE,)
        return tuple(dict.fromkeys(interface.hidden_state_name(i) for i in self.layers))

    def pooled_dim(self, hidden_size: int) -> int:
        """Length of each vector after pooling and combining, before any dense layer."""
        layers = 1 if self.layers is None or self.combine == "mean" else len(self.layers)
        return hidden_size * len(self.modes) * layers

    def full_dim(self, hidden_size: int) -> int:
        """Length of each vector before ``dimensions`` cuts it."""
        return self.dense[-1].out_features if self.dense else self.pooled_dim(hidden_size)

    def dim(self, hidden_size: int) -> int:
        """Length of each vector for a model of ``hidden_size``."""
        return self.dimensions or self.full_dim(hidden_size)

    def _pool(self, states: np.ndarray, mask: np.ndarray) -> np.ndarray:
        pooled = [TOKEN_POOLINGS[mode](states, mask) for mode in self.modes]
        return pooled[0] if len(pooled) == 1 else np.concatenate(pooled, axis=-1)

    def __call__(self, outputs: dict[str, np.ndarray], attention_mask: np.ndarray) -> np.ndarray:
        """Pool one batch of fetched outputs into (batch, dim) float32."""
        mask = attention_mask
        if self.prompt_length:
            mask = np.array(attention_mask, copy=True)
            mask[:, : self.prompt_length] = 0
        if self.modes == (POOLER,):
            vectors = outputs[interface.POOLER_OUTPUT]
        elif self.layers is None:
            vectors = self._pool(outputs[interface.LAST_HIDDEN_STATE], mask)
        else:
            pooled = [self._pool(outputs[interface.hidden_state_name(i)], mask) for i in self.layers]
            vectors = np.concatenate(pooled, axis=-1) if self.combine == "concat" else np.mean(pooled, axis=0)
        vectors = np.asarray(vectors, dtype=np.float32)
        for layer in self.dense:
            vectors = layer(vectors)
        if self.dimensions is not None:
            vectors = vectors[:, : self.dimensions]  # Matryoshka: the first values carry the most
        if self.normalize:
            vectors = _normalized(vectors)
        return np.ascontiguousarray(vectors, dtype=np.float32)
