"""The HTTP routes of ``bert-onnx serve`` (Starlette), over one :class:`~bert_onnx.serve.batcher.Batcher`.

Every route reads its body and checks it with :mod:`~bert_onnx.serve.schema` (400/413/422 naming the problem,
never a traceback), tokenizes with :mod:`~bert_onnx.serve.tokens` on the event loop (or a thread pool for a large
body), and awaits the batcher, which runs the model on its own thread. A client that disconnects while it waits
has its texts dropped from the queue.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, TypeVar

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from bert_onnx import __version__, interface, machine
from bert_onnx.errors import BertOnnxError, InvalidValueError
from bert_onnx.runtime.encoder import Encoder
from bert_onnx.runtime.recipe import EmbedRecipe, prompt_named
from bert_onnx.runtime.tokenizer import TokenIds
from bert_onnx.serve.batcher import Batcher, BatcherClosed, Kind, Outputs, QueueFull
from bert_onnx.serve.metrics import Metrics
from bert_onnx.serve.schema import (
    Inputs,
    RequestError,
    array_payload,
    check_fields,
    encode_vector,
    length_options,
    openai_refused,
    optional,
    parse_encoding_format,
    parse_input,
    parse_object,
    recipe_echo,
    recipe_fields,
    recipe_from,
)
from bert_onnx.serve.settings import ServeSettings
from bert_onnx.serve.tokens import Ids, RouteTokenizer

log = logging.getLogger(__name__)

# Bodies, texts and answers above these sizes are parsed, tokenized or serialized on a worker thread, so one big
# request does not stall every other client's event-loop work; smaller ones stay inline (a thread hop costs more).
OFFLOAD_BYTES = 256 << 10
OFFLOAD_FLOATS = 64 << 10

T = TypeVar("T")


class ClientGone(BertOnnxError):
    """The client disconnected before its answer was ready."""


class EmbeddingServer:
    """The application: ``server.app`` is the ASGI app; the batcher runs between its startup and shutdown.

    ``recipe`` (the command line's) serves ``/v1/embeddings`` and is the default of ``/embed``'s per-request
    recipe (:data:`~bert_onnx.serve.schema.RECIPE_FIELDS` lists what a request may change). Token-id input is
    refused unless ``settings.accept_token_ids``. ``model_name`` is what ``/v1/embeddings`` answers when a request
    names no model (default: the folder's name). Counts of accepted, answered and abandoned requests are logged at
    shutdown.
    """

    def __init__(
        self, encoder: Encoder, recipe: EmbedRecipe, settings: ServeSettings, model_name: str | None = None
    ) -> None:
        self.encoder = encoder
        self.recipe = recipe
        self.settings = settings
        self.model_name = model_name or encoder.model_dir.resolve().name
        self.pooling = encoder.pooling_for(recipe)  # the layers exist in this model, the prompt, dense layers
        self.max_length = recipe.max_length or encoder.max_length
        if self.max_length > encoder.max_length:
            raise InvalidValueError(f"max_length={self.max_length} is over the model's {encoder.max_length}")
        self.dim = self.pooling.dim(encoder.hidden_size)
        self.tokens = RouteTokenizer(encoder.tokenizer, encoder.manifest.vocab_size)
        self.batcher: Batcher | None = None
        self.metrics = Metrics(lambda: self.batcher.in_flight if self.batcher is not None else 0)
        self.metrics.model.info(
            {
                "folder": str(encoder.model_dir),
                "variant": encoder.variant or "",
                "backend": encoder.backend,
                "precision": encoder.precision or "",
            }
        )
        self.accepted = self.answered = self.abandoned = 0
        self._key = None if settings.api_key is None else settings.api_key.encode()
        routes = [
            Route("/v1/embeddings", self._route("/v1/embeddings", self._embeddings), methods=["POST"]),
            Route("/embed", self._route("/embed", self._embed), methods=["POST"]),
            Route("/encode", self._route("/encode", self._encode), methods=["POST"]),
            Route("/tokenize", self._route("/tokenize", self._tokenize), methods=["POST"]),
            Route("/health", self._route("/health", self._health, auth=False), methods=["GET"]),
            Route("/info", self._route("/info", self._info), methods=["GET"]),
            Route("/metrics", self._route("/metrics", self._metrics), methods=["GET"]),
        ]
        self.app = Starlette(
            routes=routes, lifespan=self._lifespan, exception_handlers={HTTPException: self._http_error}
        )

    # -- lifecycle ------------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.batcher = Batcher(self.encoder, self.settings, on_batch=self.metrics.batch, on_drop=self.metrics.drop)
        try:
            yield
        finally:
            # The ASGI server has answered every request it accepted before it gets here; close() finishes any
            # work still queued all the same, then stops the worker thread.
            await run_in_threadpool(self.batcher.close)
            log.info(
                "stopped: %d requests accepted, %d answered, %d abandoned by their client",
                self.accepted,
                self.answered,
                self.abandoned,
            )

    # -- plumbing shared by the routes --------------------------------------------------------------------------

    def _route(
        self, name: str, handler: Callable[[Request], Awaitable[Response]], auth: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` with the API key check, error answers and the per-route metrics around it."""

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            self.accepted += 1
            try:
                if auth:
                    self._check_key(request)
                response = await handler(request)
            except RequestError as exc:
                response = _error_response(exc)
            except QueueFull as exc:
                response = _error_response(RequestError(429, str(exc), kind="rate_limit_error"))
                response.headers["Retry-After"] = str(exc.retry_after)
            except BatcherClosed as exc:
                response = _error_response(RequestError(503, str(exc), kind="server_error"))
            except (ClientGone, ClientDisconnect):
                self.abandoned += 1
                self.metrics.request(name, 499, time.perf_counter() - started)
                return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
            except Exception:
                log.exception("%s %s failed", request.method, name)
                response = _error_response(
                    RequestError(500, "internal error; see the server's log", kind="server_error")
                )
            self.answered += 1
            self.metrics.request(name, response.status_code, time.perf_counter() - started)
            return response

        return endpoint

    def _check_key(self, request: Request) -> None:
        if self._key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._key):
            raise RequestError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                kind="authentication_error",
            )

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        """404 and 405 as JSON errors, like every other refusal."""
        assert isinstance(exc, HTTPException)
        return _error_response(RequestError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))

    async def _body(self, request: Request) -> dict[str, Any]:
        """The body as a JSON object, read up to ``max_body_bytes`` (413 beyond: checked before and while reading)."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"body is {int(declared)} bytes, over the limit of {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        return await _maybe_offload(size > OFFLOAD_BYTES, parse_object, body)

    async def _tokenize_inputs(
        self, inputs: Inputs, max_length: int, truncation: bool, hint: str, max_tokens: int | None = None
    ) -> list[Ids]:
        size = sum(map(len, inputs.texts if inputs.texts is not None else inputs.ids or []))
        return await _maybe_offload(
            size > OFFLOAD_BYTES,
            self.tokens,
            inputs,
            max_length,
            truncation,
            self.settings.max_request_tokens if max_tokens is None else max_tokens,
            hint,
            self.settings.max_text_chars,
        )

    async def _run(self, request: Request, tokens: Sequence[TokenIds], kind: Kind) -> Any:
        """Hand the texts to the batcher and wait for them, or for the client to leave (then drop them)."""
        assert self.batcher is not None, "the batcher starts with the application's lifespan"
        job = self.batcher.submit(tokens, kind)
        if job.future.done():
            return job.future.result()
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait((job.future, watcher), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.batcher.cancel(job)
            raise
        finally:
            watcher.cancel()
        if not job.future.done():
            self.batcher.cancel(job)
            raise ClientGone
        return job.future.result()

    # -- routes ---------------------------------------------------------------------------------------------------

    async def _embeddings(self, request: Request) -> Response:
        """``POST /v1/embeddings``, OpenAI's embeddings API over the command line's recipe."""
        data = await self._body(request)
        fields = ("input", "model", "encoding_format", "user", "prompt_name", *recipe_fields(openai=True))
        check_fields(data, fields, "POST /v1/embeddings", hints=openai_refused(self.dim))
        model = optional(data, "model", str, self.model_name, "a string")
        encoding_format = parse_encoding_format(data)
        optional(data, "user", str, None, "a string")
        inputs = self._input(data, allow_empty_text=False)
        recipe = self._prompt_named(
            data, recipe_from(data, self.recipe, self.encoder.num_layers, self.encoder.max_length, openai=True)
        )
        hint = "this server's recipe has truncation off"
        vectors, usage = await self._vectors(request, inputs, recipe, hint)
        return await _json_response(
            lambda: {"object": "list", "data": _embeddings(vectors, encoding_format), "model": model, "usage": usage},
            vectors.size,
        )

    async def _embed(self, request: Request) -> Response:
        """``POST /embed``: like ``/v1/embeddings``, with a recipe of the request's own."""
        data = await self._body(request)
        check_fields(data, ("input", "encoding_format", "prompt_name", *recipe_fields(openai=False)), "POST /embed")
        encoding_format = parse_encoding_format(data)
        inputs = self._input(data, allow_empty_text=True)
        recipe = self._prompt_named(
            data, recipe_from(data, self.recipe, self.encoder.num_layers, self.encoder.max_length)
        )
        hint = 'send "truncation": true to cut it' if not recipe.truncation else ""
        vectors, usage = await self._vectors(request, inputs, recipe, hint)
        return await _json_response(
            lambda: {
                "object": "list",
                "data": _embeddings(vectors, encoding_format),
                "dim": int(vectors.shape[1]),
                "recipe": recipe_echo(recipe),
                "usage": usage,
            },
            vectors.size,
        )

    async def _vectors(
        self, request: Request, inputs: Inputs, recipe: EmbedRecipe, hint: str
    ) -> tuple[np.ndarray, dict[str, int]]:
        """``inputs`` embedded by ``recipe``, and the request's usage (tokens run, [CLS] and [SEP] included)."""
        try:  # the request's layers, dimensions and prompt against this model
            pooling = self.pooling if recipe == self.recipe else self.encoder.pooling_for(recipe)
        except (TypeError, ValueError) as exc:
            raise RequestError(422, str(exc), "dimensions" if "dimensions" in str(exc) else None) from None
        floats = len(inputs) * pooling.dim(self.encoder.hidden_size)
        self._check_answer(floats, "send fewer texts, or fewer layers or pooling modes")
        max_length = recipe.max_length or self.encoder.max_length
        tokens = await self._tokenize_inputs(self._prompted(inputs, recipe), max_length, recipe.truncation, hint)
        try:  # a text whose tokens all merged into a prompt left out of pooling has nothing to pool
            pooling.check_tokens([len(t.ids) for t in tokens])
        except ValueError as exc:
            raise RequestError(422, str(exc).replace("texts[", "input[", 1), "input") from None
        vectors = await self._run(request, tokens, pooling)
        return vectors, _usage(sum(len(t.ids) for t in tokens))

    def _prompt_named(self, data: dict[str, Any], recipe: EmbedRecipe) -> EmbedRecipe:
        """``recipe`` with the request's ``prompt_name`` (one of the folder's prompts) in place of its prompt."""
        name = optional(data, "prompt_name", str, None, "a string")
        if name is None:
            return recipe
        try:
            return recipe.replace(prompt=prompt_named(self.encoder.manifest.recipe, name))
        except (TypeError, ValueError) as exc:
            raise RequestError(422, str(exc), "prompt_name") from None

    def _prompted(self, inputs: Inputs, recipe: EmbedRecipe) -> Inputs:
        """The texts with the recipe's prompt before each (token ids cannot take one: 422)."""
        if recipe.prompt is None:
            return inputs
        if inputs.texts is None:
            raise RequestError(
                422, f"this recipe puts the prompt {recipe.prompt!r} before each text; send texts, not token ids"
            )
        return Inputs(texts=[recipe.prompt + text for text in inputs.texts])

    async def _encode(self, request: Request) -> Response:
        """``POST /encode``: chosen graph outputs per token for a few texts, as float32 base64 with shapes."""
        data = await self._body(request)
        check_fields(data, ("input", "outputs", "max_length", "truncation"), "POST /encode")
        names = optional(data, "outputs", list, [interface.LAST_HIDDEN_STATE], "a list of output names")
        known = self.encoder.manifest.output_names
        if not names:
            raise RequestError(422, "outputs is an empty list; name at least one output", "outputs")
        for name in names:
            if not isinstance(name, str) or name not in known:
                raise RequestError(422, f"outputs: {name!r:.60} is not one of {', '.join(known)}", "outputs")
        max_length, truncation = self._length_options(data)
        settings = self.settings
        inputs = self._input(data, allow_empty_text=True, max_inputs=settings.max_encode_inputs)
        hint = 'send "truncation": true to cut it' if not truncation else ""
        tokens = await self._tokenize_inputs(inputs, max_length, truncation, hint)
        per_token = sum(name != interface.POOLER_OUTPUT for name in names)
        floats = self.encoder.hidden_size * sum(per_token * len(t.ids) + (len(names) - per_token) for t in tokens)
        self._check_answer(floats, "send fewer or shorter texts, or fewer outputs")
        rows = await self._run(request, tokens, Outputs(tuple(dict.fromkeys(names))))
        return await _json_response(
            {
                "object": "list",
                "data": [
                    {
                        "index": index,
                        "input_ids": list(t.ids),
                        "outputs": {name: array_payload(array) for name, array in row.items()},
                    }
                    for index, (t, row) in enumerate(zip(tokens, rows, strict=True))
                ],
                "usage": _usage(sum(len(t.ids) for t in tokens)),
            },
            floats,
        )

    async def _tokenize(self, request: Request) -> Response:
        """``POST /tokenize``: the ids and tokens the model would see ([CLS]/[SEP] unless add_special_tokens=false)."""
        data = await self._body(request)
        check_fields(data, ("input", "add_special_tokens", "max_length", "truncation"), "POST /tokenize")
        special = optional(data, "add_special_tokens", bool, True, "true or false")
        max_length, truncation = self._length_options(data)
        inputs = parse_input(data, self.settings.max_inputs, allow_empty_text=True)
        hint = 'send "truncation": true to cut it' if not truncation else ""
        found = await self._tokenize_inputs(inputs, max_length, truncation, hint)
        # Without special tokens: what token-id input takes, the text's tokens inside [CLS] ... [SEP] (the ids
        # the model sees, under the same max_length and truncation)
        ids = [list(t.ids if special else t.ids[1:-1]) for t in found]
        count = sum(map(len, ids))
        return await _json_response(
            lambda: {
                "data": [{"index": i, "ids": row, "tokens": self.tokens.tokens_of(row)} for i, row in enumerate(ids)],
                "usage": _usage(count),
            },
            count,
        )

    async def _health(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def _info(self, request: Request) -> Response:
        """``GET /info``: the manifest, how the model runs here, the recipe, the limits and this CPU."""
        enc = self.encoder
        settings = {k: v for k, v in asdict(self.settings).items() if k != "api_key"}
        settings["api_key"] = self.settings.api_key is not None
        packages = ("onnxruntime", "openvino", "starlette", "uvicorn", "prometheus-client")
        versions = {"bert-onnx": __version__, **machine.installed_versions(packages)}
        return _json(
            {
                "model": self.model_name,
                "folder": str(enc.model_dir),
                "variant": enc.variant,
                "backend": enc.backend,
                "precision": enc.precision,
                "picked_by": enc.picked_by,  # the tuned profile's pick, "asked for", or the default and why
                "device": enc.device,
                "layers": enc.num_layers,
                "hidden_size": enc.hidden_size,
                "max_length": enc.max_length,
                "dim": self.dim,
                "recipe": self.recipe.to_dict(),
                "recipe_source": enc.manifest.recipe.summary(),  # the folder's own recipe, where it came from
                "token_ids": "accepted" if self.settings.accept_token_ids else "refused",
                "settings": settings,
                "machine": machine.describe(),
                "versions": versions,
                "manifest": json.loads(enc.manifest.to_json()),
            }
        )

    async def _metrics(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    # -- small checks ---------------------------------------------------------------------------------------------

    def _input(self, data: dict[str, Any], allow_empty_text: bool, max_inputs: int | None = None) -> Inputs:
        """The request's ``input`` on a route that embeds or encodes: token ids only if the server accepts them."""
        return parse_input(
            data,
            self.settings.max_inputs if max_inputs is None else max_inputs,
            allow_empty_text,
            ids=True,
            accept_ids=self.settings.accept_token_ids,
        )

    def _check_answer(self, floats: int, hint: str) -> None:
        """413 when an answer would hold more than ``max_encode_bytes`` of float32 (``hint``: what to send)."""
        limit = self.settings.max_encode_bytes
        if floats * 4 > limit:
            raise RequestError(
                413, f"the answer would hold {floats * 4} bytes of float32, over the limit of {limit}; {hint}", "input"
            )

    def _length_options(self, data: dict[str, Any]) -> tuple[int, bool]:
        """``max_length`` (2..the model's, default the server recipe's) and ``truncation`` (default the recipe's)."""
        return length_options(data, self.max_length, self.recipe.truncation, self.encoder.max_length)


def _embeddings(vectors: np.ndarray, encoding_format: str) -> list[dict[str, Any]]:
    return [
        {"object": "embedding", "index": index, "embedding": encode_vector(vector, encoding_format)}
        for index, vector in enumerate(vectors)
    ]


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body has been read, so nothing else arrives on this request)."""
    while (await request.receive())["type"] != "http.disconnect":
        continue


async def _maybe_offload(offload: bool, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await run_in_threadpool(function, *args, **kwargs) if offload else function(*args, **kwargs)


def _dumps(payload: Any) -> bytes:
    # ASCII with escapes: a field echoed back (``model``) or named in an error may hold a lone surrogate, which
    # has no UTF-8 form; an escape is valid JSON for any string.
    return json.dumps(payload, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _json(payload: Any, status: int = 200) -> Response:
    return Response(_dumps(payload), status_code=status, media_type="application/json")


async def _json_response(payload: Any, floats: int) -> Response:
    """A JSON answer, serialized on a worker thread when it holds many numbers; ``payload`` may be a function
    building it (then built there too: turning arrays into lists is most of the work)."""

    def body() -> bytes:
        return _dumps(payload() if callable(payload) else payload)

    return Response(await _maybe_offload(floats > OFFLOAD_FLOATS, body), media_type="application/json")


def _error_response(error: RequestError) -> Response:
    response = _json(error.body(), status=error.status)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response
