"""``Batcher``: one worker thread that owns a model and runs every request's texts in shared batches.

Concurrent requests hand their tokenized texts to :meth:`Batcher.submit`; the worker takes everything waiting,
groups it with :func:`~bert_onnx.runtime.batching.length_sorted_batches` (the one batching function, the same
``Encoder.embed`` uses) under a row and padded-token budget, runs each batch once, pools each row with its own
request's recipe, and hands every request its rows, in order, as soon as its last row is done. Because a text's
outputs do not depend on its batch (docs/guarantees.md), a response equals ``Encoder.embed`` of its texts alone.

Nothing here knows about HTTP: the server wraps it, and a test drives it directly. It sees the model only through
:class:`~bert_onnx.serve.model.Model` (pad, forward), which ``Encoder`` implements. Inference runs on the worker
thread, off the event loop (ONNX Runtime releases the GIL while it runs).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bert_onnx import interface
from bert_onnx.errors import BertOnnxError, InvalidTypeError, InvalidValueError
from bert_onnx.runtime.batching import length_sorted_batches
from bert_onnx.runtime.pooling import Pooling
from bert_onnx.runtime.tokenizer import TokenIds
from bert_onnx.serve.model import Model
from bert_onnx.serve.settings import BatchSettings

log = logging.getLogger(__name__)


class QueueFull(BertOnnxError):
    """Accepting a request would put more than ``max_queue`` texts in flight; ``retry_after`` is a guess in
    seconds, from the tokens already in flight and the recent tokens per second."""

    def __init__(self, waiting: int, requested: int, max_queue: int, retry_after: int) -> None:
        super().__init__(
            f"the server is busy: {waiting} texts in flight, this request adds {requested}, the limit is "
            f"{max_queue} (max_queue); retry after {retry_after} s"
        )
        self.retry_after = retry_after


class BatcherClosed(BertOnnxError, RuntimeError):
    """The batcher is shutting down and takes no new work."""


@dataclass(frozen=True)
class Outputs:
    """What an encode job keeps of each row: these graph outputs, cut to the row's real tokens."""

    names: tuple[str, ...]

    @property
    def fetch(self) -> tuple[str, ...]:
        return self.names


Kind = Pooling | Outputs


@dataclass(eq=False)
class Job:
    """One request's texts. ``result`` is ``(n, dim)`` float32 for a pooling job (allocated when its first rows
    are pooled, so ``dim`` is whatever the pooling gives), a list of ``{name: array}`` for an :class:`Outputs`
    job; ``future`` resolves on the submitting event loop when every row is done."""

    kind: Kind
    size: int
    tokens: int
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    result: Any
    remaining: int
    tokens_left: int
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class _Item:
    job: Job
    row: int
    tokens: TokenIds
    length: int


# (texts, padded tokens, real tokens, seconds) of one batch.
BatchObserver = Callable[[int, int, int, float], None]


class Batcher:
    """Runs ``model`` on one worker thread over batches merged from concurrent :meth:`submit` calls.

    ``settings`` (checked when it was built) bound a batch by ``max_batch_size`` rows and ``max_batch_tokens``
    padded tokens (a longer text runs alone). ``max_padding`` closes a batch before its padding passes that fraction
    of its real tokens (see :func:`~bert_onnx.runtime.batching.length_sorted_batches`): the texts in flight at one
    moment are few, and batches of mixed lengths would spend most of their time on padding. ``max_queue`` bounds the
    texts in flight (waiting or running): a request that would pass it raises :class:`QueueFull`, unless nothing is
    in flight (so a request larger than the limit is not refused forever).
    ``max_wait_ms``: after a round of batches, how long the worker may wait for the requests those batches
    answered to come back before it starts a round with fewer (see :meth:`_gather`); a lone caller never waits.
    ``on_batch(texts, padded tokens, real tokens, seconds)`` and ``on_drop(texts)`` report to metrics; they run on
    the worker thread and on the event loop respectively.
    """

    def __init__(
        self,
        model: Model,
        settings: BatchSettings | None = None,
        on_batch: BatchObserver | None = None,
        on_drop: Callable[[int], None] | None = None,
        start: bool = True,
    ) -> None:
        settings = BatchSettings() if settings is None else settings
        if not isinstance(settings, BatchSettings):
            raise InvalidTypeError(f"settings={settings!r} must be a BatchSettings (a ServeSettings is one)")
        self.model = model
        self.max_batch_size = settings.max_batch_size
        self.max_batch_tokens = settings.max_batch_tokens
        self.max_wait = settings.max_wait_ms / 1000
        self.max_queue = settings.max_queue
        self.max_padding = settings.max_padding
        self._on_batch = on_batch
        self._on_drop = on_drop
        self._cond = threading.Condition()
        self._pending: list[_Item] = []
        self._pending_jobs = 0
        self._pending_tokens = 0
        self._in_flight = 0  # texts accepted and not finished or dropped
        self._in_flight_tokens = 0
        self._tokens_per_s = 0.0  # moving average, for Retry-After
        self._last_round_jobs = 0
        self._last_round_end = 0.0
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="bert-onnx-batcher", daemon=True)
        if start:
            self._thread.start()

    def start(self) -> None:
        """Start the worker thread (for ``start=False``: work submitted before runs as one round)."""
        self._thread.start()

    # -- the event loop's side ----------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Texts accepted and not yet finished."""
        return self._in_flight

    def submit(self, tokens: Sequence[TokenIds], kind: Kind) -> Job:
        """Queue one request's tokenized texts; await ``job.future`` for its result. Call on the event loop.

        Raises :class:`QueueFull` when the queue is full, :class:`BatcherClosed` after :meth:`close`, and
        ``InvalidValueError`` for no texts.
        """
        loop = asyncio.get_running_loop()
        size = len(tokens)
        if size == 0:
            raise InvalidValueError("submit at least one text's tokens")
        lengths = [len(t.ids) for t in tokens]
        result: Any = None if isinstance(kind, Pooling) else [None] * size
        total = sum(lengths)
        job = Job(kind, size, total, loop.create_future(), loop, result, size, total)
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            if self._in_flight and self._in_flight + size > self.max_queue:
                rate = self._tokens_per_s
                wait = math.ceil(self._in_flight_tokens / rate) if rate > 0 else 1
                raise QueueFull(self._in_flight, size, self.max_queue, max(1, min(wait, 60)))
            self._pending.extend(_Item(job, row, t, n) for row, (t, n) in enumerate(zip(tokens, lengths, strict=True)))
            self._pending_jobs += 1
            self._pending_tokens += job.tokens
            self._in_flight += size
            self._in_flight_tokens += job.tokens
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Drop what is left of ``job`` (its client went away): rows not yet run are skipped."""
        with self._cond:
            if job.cancelled or job.remaining == 0:
                return
            dropped = job.remaining
            self._drop(job)
        if not job.future.done():
            job.future.cancel()
        if self._on_drop is not None:
            self._on_drop(dropped)

    def _drop(self, job: Job) -> None:
        """Forget ``job``'s unfinished rows (holding the condition): those still pending leave the queue now (so a
        client that submits and leaves, again and again, cannot grow it while a round runs); the worker skips those
        already taken into its round."""
        job.cancelled = True
        self._in_flight -= job.remaining
        self._in_flight_tokens -= job.tokens_left
        job.remaining = job.tokens_left = 0
        kept = [item for item in self._pending if item.job is not job]
        if len(kept) < len(self._pending):  # a job's rows are all pending or all taken: it was waiting
            self._pending_jobs -= 1
            self._pending_tokens -= job.tokens
            self._pending = kept

    def close(self) -> None:
        """Finish every accepted text, then stop the worker thread. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.ident is None:  # never started: run what was submitted, then stop
            self._thread.start()
        self._thread.join()

    # -- the worker thread ------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                self._gather()
                items = [item for item in self._pending if not item.job.cancelled]
                jobs = self._pending_jobs
                self._pending, self._pending_jobs, self._pending_tokens = [], 0, 0
            lengths = [item.length for item in items]
            for rows in length_sorted_batches(lengths, self.max_batch_size, self.max_batch_tokens, self.max_padding):
                # A client may leave while earlier batches of the round run: skip its rows.
                group = [items[i] for i in rows if not items[i].job.cancelled]
                if group:
                    self._run(group)
            with self._cond:
                self._last_round_jobs = jobs
                self._last_round_end = time.perf_counter()

    def _gather(self) -> None:
        """Wait (holding the condition) for more requests before a round, when more are known to be coming.

        The requests the last round answered are likely to be followed by new ones from the same clients within a
        round trip; starting at once would run them in a smaller, more padded round. So, if the last round ended
        under ``max_wait`` ago, wait until as many requests are pending as it answered, a batch's worth of tokens
        is pending, or ``max_wait`` has passed. A lone client's next request finds itself expected and runs at once.
        """
        if self.max_wait <= 0:
            return
        now = time.perf_counter()
        if now - self._last_round_end >= self.max_wait:
            return
        deadline = now + self.max_wait
        while (
            not self._closing
            and self._pending_jobs < self._last_round_jobs
            and self._pending_tokens < self.max_batch_tokens
        ):
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._cond.wait(left)

    def _run(self, group: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            batch = self.model.pad([item.tokens for item in group])
            kinds: dict[Kind, list[int]] = {}
            for index, item in enumerate(group):
                kinds.setdefault(item.job.kind, []).append(index)
            fetch = list(dict.fromkeys(name for kind in kinds for name in kind.fetch))
            outputs = self.model.forward(batch, fetch)
            for kind, indices in kinds.items():
                if isinstance(kind, Pooling):
                    self._pool(kind, indices, group, outputs, batch.attention_mask)
                else:
                    for index in indices:
                        item = group[index]
                        item.job.result[item.row] = _cut(kind.names, outputs, index, item.length)
        except Exception as exc:  # a bug or a backend failure: fail these requests, keep serving the others
            log.exception("a batch of %d texts failed", len(group))
            self._finish(group, exc)
            return
        seconds = time.perf_counter() - started
        real = sum(item.length for item in group)
        padded = len(group) * int(batch.input_ids.shape[1])
        if seconds > 0:
            rate = real / seconds
            self._tokens_per_s = rate if self._tokens_per_s == 0 else 0.8 * self._tokens_per_s + 0.2 * rate
        if self._on_batch is not None:
            self._on_batch(len(group), padded, real, seconds)
        self._finish(group, None)

    @staticmethod
    def _pool(
        pooling: Pooling, indices: list[int], group: list[_Item], outputs: dict[str, np.ndarray], mask: np.ndarray
    ) -> None:
        if len(indices) == len(group):  # the usual case, one recipe per batch: no copy
            vectors = pooling(outputs, mask)
        else:
            vectors = pooling({name: outputs[name][indices] for name in pooling.fetch}, mask[indices])
        for vector, index in zip(vectors, indices, strict=True):
            item = group[index]
            if item.job.result is None:  # the job's first rows: now its vectors' length is known
                item.job.result = np.empty((item.job.size, vectors.shape[1]), dtype=np.float32)
            item.job.result[item.row] = vector

    def _finish(self, group: list[_Item], error: Exception | None) -> None:
        done: dict[Job, list[int]] = {}
        for item in group:
            rows_tokens = done.setdefault(item.job, [0, 0])
            rows_tokens[0] += 1
            rows_tokens[1] += item.length
        with self._cond:
            for job, (rows, tokens) in done.items():
                if job.cancelled:
                    continue
                job.remaining -= rows
                job.tokens_left -= tokens
                self._in_flight -= rows
                self._in_flight_tokens -= tokens
                if error is not None:
                    self._drop(job)  # its other rows may still be queued: skip them
                    job.loop.call_soon_threadsafe(_set_exception, job.future, error)
                elif job.remaining == 0:
                    job.loop.call_soon_threadsafe(_set_result, job.future, job.result)


def _cut(names: tuple[str, ...], outputs: dict[str, np.ndarray], index: int, length: int) -> dict[str, np.ndarray]:
    """One row's outputs: token states cut to its real tokens, (length, hidden); pooler_output (hidden,)."""
    return {
        name: outputs[name][index].copy() if name == interface.POOLER_OUTPUT else outputs[name][index, :length].copy()
        for name in names
    }


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
