"""Input checks that run before ONNX Runtime sees anything, so bad input is a named Python error, not a crash."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bert_onnx.errors import InvalidTypeError, InvalidValueError
from bert_onnx.families import BERT, TOKEN_TYPE_IDS, ModelFamily
from bert_onnx.interface import INPUT_NAMES


def check_texts(texts: Any) -> list[str]:
    """Return ``texts`` as a list of str; a single str is a batch of one.

    Raises ``TypeError`` naming an item that is not a str, ``ValueError`` naming one that is not valid Unicode.
    """
    if isinstance(texts, bytes | bytearray) or not isinstance(texts, str | Sequence | np.ndarray):
        raise InvalidTypeError(f"texts must be a str or a sequence of str, not {type(texts).__name__}")
    if isinstance(texts, np.ndarray) and texts.ndim == 0:
        raise InvalidTypeError(
            f"texts is a 0-d NumPy array ({texts!r:.40}), which holds one value and cannot be iterated; pass a str, "
            "a list of str or a 1-d array"
        )
    batch = [texts] if isinstance(texts, str) else list(texts)
    for index, text in enumerate(batch):
        if not isinstance(text, str):
            raise InvalidTypeError(f"texts[{index}] is {type(text).__name__} ({text!r:.40}), expected str")
        if not text.isascii():
            _check_surrogates(index, text)
    return batch


def _check_surrogates(index: int, text: str) -> None:
    # Python strings may hold lone surrogates (e.g. from os.fsdecode or "surrogateescape"); they are not Unicode
    # text, and the tokenizer rejects them with an unhelpful message.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise InvalidValueError(
            f"texts[{index}] holds a lone surrogate U+{code:04X} at position {exc.start}, which is not valid "
            "Unicode text (decode bytes with errors='replace' to keep such input)"
        ) from None


def check_id_array(name: str, value: Any, upper: int, allow_bool: bool = False) -> np.ndarray:
    """``value`` as a C-contiguous int64 array of shape (batch, sequence) with values in ``[0, upper)``."""
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise InvalidValueError(f"{name} must be a rectangular 2-d array of integers ({exc})") from exc
    if array.ndim != 2:
        raise InvalidValueError(
            f"{name} must be 2-d (batch, sequence); got shape {array.shape}. Wrap a single sequence as [ids]."
        )
    if array.dtype == np.bool_ and allow_bool:
        array = array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidValueError(f"{name} must hold integers; got dtype {array.dtype}")
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= upper:
            bad = low if low < 0 else high
            where = tuple(int(i) for i in np.argwhere(array == bad)[0])
            raise InvalidValueError(f"{name}{list(where)} = {bad} is outside [0, {upper})")
    return np.ascontiguousarray(array, dtype=np.int64)


def check_model_inputs(
    input_ids: Any,
    attention_mask: Any,
    token_type_ids: Any,
    vocab_size: int,
    type_vocab_size: int,
    max_length: int,
    input_names: Sequence[str] = INPUT_NAMES,
    family: ModelFamily = BERT,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate pre-tokenized input for a graph taking ``input_names``; missing mask means all ones, missing segment
    ids all zeros (as transformers). Returns (ids, mask, segment ids or ``None`` where the graph takes none).

    Segment ids for a graph without that input are refused, except all zeros for a family whose model takes them
    but whose checkpoint has one segment type (RoBERTa): that is what the model computes without them.
    """
    ids = check_id_array("input_ids", input_ids, vocab_size)
    mask = (
        np.ones_like(ids)
        if attention_mask is None
        else check_id_array("attention_mask", attention_mask, 2, allow_bool=True)
    )
    takes_segments = TOKEN_TYPE_IDS in input_names
    if token_type_ids is not None and not takes_segments and not family.token_type_ids:
        raise InvalidValueError(
            f"token_type_ids given, but {family.model_type} models take no segment ids (this graph's inputs: "
            f"{', '.join(input_names)}); pass token_type_ids=None"
        )
    types = (
        np.zeros_like(ids)
        if token_type_ids is None
        else check_id_array("token_type_ids", token_type_ids, max(type_vocab_size, 1) if takes_segments else 1)
    )
    for name, other in (("attention_mask", mask), ("token_type_ids", types)):
        if other.shape != ids.shape:
            raise InvalidValueError(f"{name} has shape {other.shape} but input_ids has shape {ids.shape}")
    batch, sequence = ids.shape
    if batch and sequence == 0:
        raise InvalidValueError("input_ids has sequence length 0; every row needs at least one token")
    if sequence > max_length:
        raise InvalidValueError(
            f"input_ids has sequence length {sequence}, over the model's maximum of {max_length} positions"
        )
    return ids, mask, types if takes_segments else None
