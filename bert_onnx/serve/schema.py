"""Request bodies in, checked values out: every way a body can be wrong becomes a :class:`RequestError` (4xx).

JSON is parsed by hand rather than by a model library so that each message names the field, the index and the
valid values, the way the runtime's own errors do (``input[3] is 600 tokens long, over max_length=512``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bert_onnx._checks import check_int
from bert_onnx.errors import BertOnnxError, InvalidValueError
from bert_onnx.runtime.inputs import check_texts
from bert_onnx.runtime.recipe import EmbedRecipe

ENCODING_FORMATS = ("float", "base64")

# Three things a client sending token ids needs to know (issue: LangChain's OpenAIEmbeddings posts tiktoken's ids by
# default, and every id below the vocabulary size would pass as one of this model's WordPiece tokens).
TOKEN_IDS_REFUSED = (
    "input holds token ids, and this server tokenizes text itself: ids from another tokenizer (such as the tiktoken "
    "ids LangChain's OpenAIEmbeddings sends by default) would give wrong vectors. Send the texts as strings instead "
    "(LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False)), or, if these ids come from this model's "
    "own tokenizer (POST /tokenize returns them), start the server with --accept-token-ids "
    "(ServeSettings(accept_token_ids=True) in Python)"
)


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


def _looks_like_ids(value: list[Any]) -> bool:
    """A list of ints, or a list whose first item is a list: what a client sends as token ids."""
    return isinstance(value[0], list) or all(type(x) is int for x in value)


def parse_input(
    data: dict[str, Any], max_inputs: int, allow_empty_text: bool, ids: bool = False, accept_ids: bool = False
) -> Inputs:
    """``input``: a string or a list of strings; on a route that takes token ids (``ids``), also a list of ids or a
    list of id lists, refused (422, :data:`TOKEN_IDS_REFUSED`) unless the server ``accept_ids``.

    Empty input (a missing field, ``[]``, and, where ``allow_empty_text`` is off as in OpenAI's API, ``""``) is
    refused with 422; more than ``max_inputs`` items with 413.
    """
    if "input" not in data or data["input"] is None:
        raise RequestError(422, "input is required: a string or a list of strings", param="input")
    value = data["input"]
    takes_ids = ids and accept_ids
    kinds = "a string, a list of strings" + (", a list of token ids or a list of token-id lists" if takes_ids else "")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise RequestError(422, f"input must be {kinds}, not {_json_type(value)}", param="input")
    if not value:
        raise RequestError(422, "input is an empty list; send at least one text", param="input")
    if len(value) > max_inputs:
        raise RequestError(413, f"input has {len(value)} items, over the limit of {max_inputs} per request", "input")
    if ids and not accept_ids and _looks_like_ids(value):
        raise RequestError(422, TOKEN_IDS_REFUSED, param="input")
    if takes_ids and all(type(x) is int for x in value):
        value = [value]  # one sequence of token ids
    first = value[0]
    if isinstance(first, str):
        return Inputs(texts=_texts(value, allow_empty_text))
    if takes_ids and isinstance(first, list):
        return Inputs(ids=_id_lists(value))
    raise RequestError(422, f"input must be {kinds}; input[0] is {_json_type(first)}", param="input")


def _texts(value: list[Any], allow_empty_text: bool) -> list[str]:
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise RequestError(422, f"input[{index}] is {_json_type(item)}; input mixes texts and other values")
        if not item and not allow_empty_text:
            raise RequestError(422, f"input[{index}] is an empty string; send text to embed", param="input")
    try:
        return check_texts(value)
    except (TypeError, ValueError) as exc:  # lone surrogates: "\ud800" is valid JSON but not Unicode text
        raise RequestError(422, f"input: {exc}", param="input") from None


def _id_lists(value: list[Any]) -> list[list[int]]:
    for index, item in enumerate(value):
        if not isinstance(item, list) or not all(type(x) is int for x in item):
            raise RequestError(
                422, f"input[{index}] is not a list of integer token ids; input mixes kinds of items", "input"
            )
        if not item:
            raise RequestError(422, f"input[{index}] is an empty list of token ids", param="input")
    return value


def check_max_length(value: object, limit: int) -> int:
    """A request's ``max_length``: an int from 2 (room for [CLS] and [SEP]) to the model's ``limit`` (422)."""
    try:
        return check_int("max_length", value, 2, limit, hint=f"{limit} is this model's limit")
    except InvalidValueError as exc:
        raise RequestError(422, str(exc), param="max_length") from None


def length_options(data: dict[str, Any], max_length: int, truncation: bool, limit: int) -> tuple[int, bool]:
    """``max_length`` and ``truncation`` of a route that tokenizes without a recipe (``/encode``, ``/tokenize``);
    the arguments are the defaults (the server recipe's) and the model's limit."""
    value = data.get("max_length")
    chosen = max_length if value is None else check_max_length(value, limit)
    return chosen, optional(data, "truncation", bool, truncation, "true or false")


# -- the per-request recipe -------------------------------------------------------------------------------------


def _same(value: Any) -> Any:
    return value


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class RecipeField:
    """An :class:`~bert_onnx.runtime.recipe.EmbedRecipe` field a request may set, under the same name.

    ``openai``: ``POST /v1/embeddings`` takes it too (OpenAI's API has a field of that name and meaning), besides
    ``POST /embed``, which takes every one. ``convert`` turns the JSON value into the recipe's (a list into a
    tuple); the recipe then checks it, and its error becomes a 422.
    """

    name: str
    openai: bool = False
    convert: Callable[[Any], Any] = _same


# The one list of recipe fields a request may set: a route's accepted fields, the recipe it builds and the recipe
# /embed echoes all come from it. A new per-request field is one entry here (plus the recipe's own field).
RECIPE_FIELDS: tuple[RecipeField, ...] = (
    RecipeField("pooling"),
    RecipeField("layers", convert=_tuple),
    RecipeField("combine"),
    RecipeField("normalize"),
    RecipeField("max_length"),
    RecipeField("truncation"),
    RecipeField("dimensions", openai=True),  # OpenAI's Matryoshka cut; renormalized when the recipe normalizes
)

# OpenAI fields /v1/embeddings refuses with a reason, while no RecipeField takes them ({dim}: the server's).
OPENAI_REFUSED: dict[str, str] = {}


def recipe_fields(openai: bool) -> tuple[str, ...]:
    """The recipe fields ``/v1/embeddings`` (``openai``) or ``/embed`` takes."""
    return tuple(f.name for f in RECIPE_FIELDS if f.openai or not openai)


def openai_refused(dim: int) -> dict[str, str]:
    """Why ``/v1/embeddings`` refuses each OpenAI field it does not take, for :func:`check_fields`' hints."""
    taken = recipe_fields(openai=True)
    return {name: why.format(dim=dim) for name, why in OPENAI_REFUSED.items() if name not in taken}


def recipe_from(
    data: dict[str, Any], base: EmbedRecipe, num_layers: int, model_max_length: int, openai: bool = False
) -> EmbedRecipe:
    """The server's recipe with the recipe fields this request sets (those :func:`recipe_fields` names for the
    route), validated by :class:`EmbedRecipe` against this model (422 naming the bad field)."""
    changes = {f.name: f.convert(data[f.name]) for f in RECIPE_FIELDS if f.name in data and (f.openai or not openai)}
    if changes.get("max_length") is not None:
        changes["max_length"] = check_max_length(changes["max_length"], model_max_length)
    _check_once(changes, num_layers)
    try:
        recipe = base.replace(**changes)
    except (TypeError, ValueError) as exc:
        named = [name for name in changes if name in str(exc)]
        raise RequestError(422, str(exc), param=named[0] if named else None) from None
    return recipe


def _check_once(changes: dict[str, Any], num_layers: int) -> None:
    """Each layer and each pooling mode at most once (422): a repeat only repeats values, and a request of a few
    bytes could make every vector thousands of times longer."""
    layers = changes.get("layers")
    if isinstance(layers, tuple) and all(type(layer) is int for layer in layers):
        resolved = [layer + num_layers + 1 if layer < 0 else layer for layer in layers]
        repeated = next((layer for layer in resolved if resolved.count(layer) > 1), None)
        if repeated is not None:
            raise RequestError(
                422, f"layers names hidden state {repeated} more than once; name each layer once", "layers"
            )
    modes = changes.get("pooling")
    if isinstance(modes, list) and all(isinstance(mode, str) for mode in modes) and len(set(modes)) < len(modes):
        raise RequestError(422, "pooling names a mode more than once; name each mode once", "pooling")


def recipe_echo(recipe: EmbedRecipe) -> dict[str, Any]:
    """The recipe fields a request may set, as ``/embed`` answers them."""
    names = recipe_fields(openai=False)
    return {name: value for name, value in recipe.to_dict().items() if name in names}


def parse_encoding_format(data: dict[str, Any]) -> str:
    value = optional(data, "encoding_format", str, "float", "float or base64")
    if value not in ENCODING_FORMATS:
        raise RequestError(422, f"encoding_format={value!r:.40} is not one of float, base64", "encoding_format")
    return str(value)


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
