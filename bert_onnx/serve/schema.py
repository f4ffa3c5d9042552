"""Request bodies in, checked values out: every way a body can be wrong becomes a :class:`RequestError` (4xx).

JSON is parsed by hand rather than by a model library so that each message names the field, the index and the
valid values, the way the runtime's own errors do (``input[3] is 600 tokens long, over max_length=512``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bert_onnx.errors import BertOnnxError
from bert_onnx.runtime.inputs import check_texts
from bert_onnx.runtime.recipe import EmbedRecipe
from bert_onnx.runtime.tokenizer import TextTooLongError, TokenIds, Tokenizer
from bert_onnx.serve.batcher import Ids

ENCODING_FORMATS = ("float", "base64")


class RequestError(BertOnnxError):
    """A request the server refuses: HTTP ``status``, a message naming the problem, and the field (``param``).

    The body follows OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, which the ``openai``
    SDK turns into its exceptions.
    """

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict[str, Any]:
        message = self.message if len(self.message) <= 1000 else self.message[:1000] + " ..."
        return {"error": {"message": message, "type": self.kind, "param": self.param, "code": None}}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (400 if it is not JSON, or not an object)."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise RequestError(400, "body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, invalid UTF-8, an integer of more than 4,300 digits
        raise RequestError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(400, f"body must be a JSON object, not {_json_type(data)}")
    return data


def check_fields(data: dict[str, Any], allowed: Iterable[str], route: str, hints: dict[str, str] | None = None) -> None:
    """Refuse fields this route does not support, naming them and the supported ones (422)."""
    allowed = tuple(allowed)
    unknown = [name for name in data if name not in allowed]
    if not unknown:
        return
    hint = next(((name, (hints or {})[name]) for name in unknown if name in (hints or {})), None)
    if hint is not None:
        raise RequestError(422, f"{hint[0]} is not supported by {route}: {hint[1]}", param=hint[0])
    raise RequestError(
        422,
        f"unsupported field(s) for {route}: {', '.join(unknown)}; supported: {', '.join(allowed)}",
        param=unknown[0],
    )


def optional(data: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any, what: str) -> Any:
    """``data[name]`` when present and of ``kind`` (booleans are not ints), else ``default``; 422 otherwise."""
    if name not in data or data[name] is None:
        return default
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise RequestError(422, f"{name} must be {what}, not {_json_type(value)} ({value!r:.40})", param=name)
    return value


@dataclass(frozen=True)
class Inputs:
    """A request's input: texts, or token-id sequences (the text's tokens without [CLS]/[SEP])."""

    texts: list[str] | None = None
    ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.ids or [])


def parse_input(data: dict[str, Any], max_inputs: int, allow_ids: bool, allow_empty_text: bool) -> Inputs:
    """``input``: a string, a list of strings, or (``allow_ids``) a list of ids or a list of id lists.

    Empty input (a missing field, ``[]``, and, where ``allow_empty_text`` is off as in OpenAI's API, ``""``) is
    refused with 422; more than ``max_inputs`` items with 413.
    """
    if "input" not in data or data["input"] is None:
        raise RequestError(422, "input is required: a string or a list of strings", param="input")
    value = data["input"]
    kinds = "a string, a list of strings" + (", a list of token ids or a list of token-id lists" if allow_ids else "")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise RequestError(422, f"input must be {kinds}, not {_json_type(value)}", param="input")
    if not value:
        raise RequestError(422, "input is an empty list; send at least one text", param="input")
    if len(value) > max_inputs:
        raise RequestError(413, f"input has {len(value)} items, over the limit of {max_inputs} per request", "input")
    if allow_ids and all(type(x) is int for x in value):
        value = [value]  # one sequence of token ids
    first = value[0]
    if isinstance(first, str):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise RequestError(422, f"input[{index}] is {_json_type(item)}; input mixes texts and other values")
            if not item and not allow_empty_text:
                raise RequestError(422, f"input[{index}] is an empty string; send text to embed", param="input")
        try:
            texts = check_texts(value)
        except (TypeError, ValueError) as exc:  # lone surrogates: "\ud800" is valid JSON but not Unicode text
            raise RequestError(422, f"input: {exc}", param="input") from None
        return Inputs(texts=texts)
    if allow_ids and isinstance(first, list):
        for index, item in enumerate(value):
            if not isinstance(item, list) or not all(type(x) is int for x in item):
                raise RequestError(
                    422, f"input[{index}] is not a list of integer token ids; input mixes kinds of items", "input"
                )
            if not item:
                raise RequestError(422, f"input[{index}] is an empty list of token ids", param="input")
        return Inputs(ids=value)
    raise RequestError(422, f"input must be {kinds}; input[0] is {_json_type(first)}", param="input")


class Tokens:
    """Turns checked :class:`Inputs` into model inputs under a ``max_length`` and truncation rule."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        special = tokenizer.backend.encode("")  # [CLS] [SEP]: how the tokenizer wraps a text
        self.cls, self.sep = special.ids[0], special.ids[-1]

    def __call__(self, inputs: Inputs, max_length: int, truncation: bool, max_tokens: int, hint: str) -> list[TokenIds]:
        """Model inputs, [CLS] and [SEP] included; 422 for a text over ``max_length`` tokens without truncation
        (its message ends with ``hint``) or an id outside the vocabulary; 413 when the request holds more than
        ``max_tokens`` tokens."""
        tokens: list[TokenIds]
        if inputs.texts is not None:
            try:
                tokens = list(self.tokenizer.encodings(inputs.texts, max_length, truncation))
            except TextTooLongError as exc:
                raise RequestError(
                    422,
                    f"input[{exc.index}] is {exc.length} tokens long, over max_length={exc.max_length}; {hint}",
                    param="input",
                ) from None
        else:
            tokens = [self._wrap(i, ids, max_length, truncation, hint) for i, ids in enumerate(inputs.ids or [])]
        total = sum(len(t.ids) for t in tokens)
        if total > max_tokens:
            raise RequestError(413, f"input has {total} tokens, over the limit of {max_tokens} per request", "input")
        return tokens

    def _wrap(self, index: int, ids: list[int], max_length: int, truncation: bool, hint: str) -> Ids:
        low, high = min(ids), max(ids)
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise RequestError(
                422,
                f"input[{index}][{ids.index(bad)}] = {bad} is outside the vocabulary [0, {self.vocab_size})",
                param="input",
            )
        if len(ids) + 2 > max_length:
            if not truncation:
                raise RequestError(
                    422,
                    f"input[{index}] is {len(ids) + 2} tokens long with [CLS] and [SEP], over "
                    f"max_length={max_length}; {hint}",
                    param="input",
                )
            ids = ids[: max_length - 2]  # as the tokenizer truncates a text: the final [SEP] stays
        full = (self.cls, *ids, self.sep)
        return Ids(full, (0,) * len(full))


def recipe_from(data: dict[str, Any], base: EmbedRecipe, num_layers: int, model_max_length: int) -> EmbedRecipe:
    """The server's recipe with this request's ``pooling``, ``layers``, ``combine``, ``normalize``, ``max_length``,
    ``truncation`` and ``dimensions``, validated by :class:`EmbedRecipe` (422 naming the bad field); the server
    checks it against this model."""
    names = ("pooling", "combine", "normalize", "max_length", "truncation", "dimensions")
    changes: dict[str, Any] = {name: data[name] for name in names if name in data}
    max_length = changes.get("max_length")
    if type(max_length) is int and max_length > model_max_length:
        raise RequestError(422, f"max_length={max_length} is over the model's {model_max_length}", "max_length")
    if "layers" in data:
        layers = data["layers"]
        changes["layers"] = tuple(layers) if isinstance(layers, list) else layers
    try:
        fields: dict[str, Any] = {**base.to_dict(), "layers": base.layers, **changes}
        recipe = EmbedRecipe(**fields)
    except (TypeError, ValueError) as exc:
        raise RequestError(422, str(exc)) from None
    return recipe


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """A float list, or base64 of little-endian float32 bytes (what OpenAI's ``encoding_format="base64"`` sends)."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


def array_payload(array: np.ndarray) -> dict[str, Any]:
    """A float32 array as ``{"shape", "dtype", "data"}`` with little-endian base64 data."""
    return {
        "shape": list(array.shape),
        "dtype": "float32",
        "data": base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii"),
    }
