"""The server's batcher on its own, in process: no HTTP, no subprocess.

``Batcher(start=False)`` lets a test queue several requests before the worker takes them, so "one round merges
requests" is checked deterministically. With the tiny checkpoint's ``Encoder`` as the model, every result is
compared with ``Encoder.embed``/``encode`` of the same texts alone. :class:`IdModel`, a small model without a graph
that implements the batcher's ``Model`` protocol, makes each row's vector a known function of its ids, for the
wait-to-fill logic (``_gather``) and a failing backend. Also: the padding bound of ``length_sorted_batches``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bert_onnx import interface
from bert_onnx.export.corpus import documentation_paragraphs
from bert_onnx.runtime import EmbedRecipe, Encoder
from bert_onnx.runtime.batching import length_sorted_batches
from bert_onnx.runtime.tokenizer import TokenIds, TokenizedBatch
from bert_onnx.serve.batcher import Batcher, Outputs, QueueFull
from bert_onnx.serve.model import Model
from bert_onnx.serve.settings import BatchSettings
from bert_onnx.serve.tokens import Ids

pytestmark = pytest.mark.fast

TEXTS = list(documentation_paragraphs()[:12])


@given(
    lengths=st.lists(st.integers(1, 600), max_size=80),
    batch_size=st.integers(1, 40),
    max_tokens=st.integers(512, 9000),
    max_padding=st.sampled_from([None, 0.0, 0.1, 0.25, 1.0]),
)
def test_length_sorted_batches_keep_their_budgets(
    lengths: list[int], batch_size: int, max_tokens: int, max_padding: float | None
) -> None:
    groups = list(length_sorted_batches(lengths, batch_size, max_tokens, max_padding))
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    previous = None
    for group in groups:
        width = lengths[group[0]]
        assert all(lengths[i] <= width for i in group)  # longest first within a group ...
        assert previous is None or width <= previous  # ... and from group to group
        previous = min(lengths[i] for i in group)
        assert len(group) <= batch_size
        if len(group) > 1:
            assert len(group) * width <= max_tokens
            if max_padding is not None:
                assert len(group) * width <= (1 + max_padding) * sum(lengths[i] for i in group) + 1e-9
    if max_padding is None:  # groups as full as the budgets allow
        for group in groups[:-1]:
            assert len(group) == max(1, min(batch_size, max_tokens // max(1, lengths[group[0]])))


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def tokens(encoder: Encoder, texts: list[str], max_length: int = 512) -> list[Any]:
    return list(encoder.tokenizer.encodings(texts, max_length))


def pooling(encoder: Encoder, **recipe: Any) -> Any:
    return EmbedRecipe(**recipe).pooling_for(encoder.num_layers)


def test_one_round_merges_requests_and_gives_each_its_rows(encoder: Callable[[str], Encoder]) -> None:
    tiny = encoder("tiny")
    batches: list[int] = []
    recipes: list[dict[str, Any]] = [
        {"pooling": "mean", "normalize": True},
        {"pooling": "cls"},
        {"pooling": "pooler"},
        {"pooling": "mean", "layers": (0, 2), "combine": "concat"},
    ]

    async def main() -> list[Any]:
        batcher = Batcher(tiny, BatchSettings(max_padding=None), start=False, on_batch=lambda n, *_: batches.append(n))
        jobs = [batcher.submit(tokens(tiny, TEXTS[i : i + 3]), pooling(tiny, **r)) for i, r in enumerate(recipes)]
        names = ("hidden_states.1", "pooler_output")
        jobs.append(batcher.submit(tokens(tiny, TEXTS[:2]), Outputs(names)))
        batcher.start()
        results = [await job.future for job in jobs]
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        return results

    results = run(main())
    assert batches == [14]  # 4 x 3 texts and 2 more: one round, one batch (budgets allowing)
    for i, (recipe, got) in enumerate(zip(recipes, results, strict=False)):
        expected = np.concatenate([tiny.embed([t], **recipe) for t in TEXTS[i : i + 3]])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    for text, row in zip(TEXTS[:2], results[-1], strict=True):
        alone = tiny.encode([text])
        assert alone.hidden_states is not None
        np.testing.assert_allclose(row["hidden_states.1"], alone.hidden_states[1][0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(row["pooler_output"], alone.pooler_output[0], rtol=0, atol=1e-5)


def test_a_cancelled_request_is_not_run(encoder: Callable[[str], Encoder]) -> None:
    tiny = encoder("tiny")
    ran: list[int] = []
    dropped: list[int] = []

    async def main() -> tuple[Any, Any, int]:
        batcher = Batcher(tiny, start=False, on_batch=lambda n, *_: ran.append(n), on_drop=dropped.append)
        gone = batcher.submit(tokens(tiny, TEXTS[:5]), pooling(tiny))
        kept = batcher.submit(tokens(tiny, TEXTS[5:7]), pooling(tiny))
        batcher.cancel(gone)
        batcher.start()
        result = await kept.future
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        return gone.future, result, batcher.in_flight

    gone, result, in_flight = run(main())
    assert gone.cancelled() and dropped == [5] and sum(ran) == 2 and in_flight == 0
    np.testing.assert_allclose(result, np.concatenate([tiny.embed([t]) for t in TEXTS[5:7]]), rtol=0, atol=1e-5)


def test_a_full_queue_refuses_and_an_empty_one_accepts_anything(encoder: Callable[[str], Encoder]) -> None:
    tiny = encoder("tiny")

    async def main() -> None:
        batcher = Batcher(tiny, BatchSettings(max_queue=4), start=False)
        batcher.submit(tokens(tiny, TEXTS[:3]), pooling(tiny))
        with pytest.raises(QueueFull, match="3 texts in flight, this request adds 2, the limit is 4") as refused:
            batcher.submit(tokens(tiny, TEXTS[:2]), pooling(tiny))
        assert refused.value.retry_after >= 1
        last = batcher.submit(tokens(tiny, TEXTS[:1]), pooling(tiny))
        batcher.start()
        await last.future
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)

        alone = Batcher(tiny, BatchSettings(max_queue=4))
        big = alone.submit(tokens(tiny, TEXTS[:10]), pooling(tiny))  # more than the limit, but nothing in flight
        assert (await big.future).shape == (10, tiny.hidden_size)
        await asyncio.get_running_loop().run_in_executor(None, alone.close)

    run(main())


def test_close_finishes_accepted_work(encoder: Callable[[str], Encoder]) -> None:
    tiny = encoder("tiny")

    async def main() -> Any:
        batcher = Batcher(tiny, start=False)
        job = batcher.submit(tokens(tiny, TEXTS[:4]), pooling(tiny))
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)  # never started: close runs it
        return await job.future

    assert run(main()).shape == (4, tiny.hidden_size)


class FailsOnce:
    """The tiny ``Encoder`` behind the batcher's ``Model`` protocol, except that its first forward pass fails."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.calls = 0

    def pad(self, tokens: Sequence[TokenIds]) -> TokenizedBatch:
        return self.encoder.pad(tokens)

    def forward(self, batch: TokenizedBatch, names: Sequence[str]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("the backend failed")
        return self.encoder.forward(batch, names)


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on(encoder: Callable[[str], Encoder]) -> None:
    tiny = encoder("tiny")
    model: Model = FailsOnce(tiny)

    async def main() -> Any:
        batcher = Batcher(model, BatchSettings(max_padding=None))
        first = batcher.submit(tokens(tiny, TEXTS[:2]), pooling(tiny))
        with pytest.raises(RuntimeError, match="the backend failed"):
            await first.future
        second = batcher.submit(tokens(tiny, TEXTS[:2]), pooling(tiny))
        result = await second.future
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        assert batcher.in_flight == 0
        return result

    np.testing.assert_allclose(run(main()), tiny.embed(TEXTS[:2]), rtol=0, atol=1e-5)


# -- a model without a graph, for what the batcher does around it ---------------------------------------------


class IdModel:
    """A :class:`~bert_onnx.serve.model.Model` without a graph: every token's state is its id in each of
    ``HIDDEN`` dimensions, so a row's mean-pooled vector is the mean of its ids. Records each batch's row count."""

    HIDDEN = 3

    def __init__(self) -> None:
        self.batches: list[int] = []

    def pad(self, tokens: Sequence[TokenIds]) -> TokenizedBatch:
        width = max(len(t.ids) for t in tokens)
        ids = np.zeros((len(tokens), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, t in enumerate(tokens):
            ids[row, : len(t.ids)] = t.ids
            mask[row, : len(t.ids)] = 1
        return TokenizedBatch(ids, mask, np.zeros_like(ids))

    def forward(self, batch: TokenizedBatch, names: Sequence[str]) -> dict[str, np.ndarray]:
        self.batches.append(len(batch.input_ids))
        states = np.repeat(batch.input_ids[:, :, None].astype(np.float32), self.HIDDEN, axis=2)  # (B, T, H)
        return {name: states[:, 0] if name == interface.POOLER_OUTPUT else states for name in names}


def id_rows(*rows: tuple[int, ...]) -> list[TokenIds]:
    return [Ids(row, (0,) * len(row)) for row in rows]


MEAN = EmbedRecipe(pooling="mean").pooling_for(2)


def test_rows_reach_their_own_requests_with_a_model_of_known_outputs() -> None:
    """Three requests in one round, one batch, mixed lengths: each gets the means of its own rows, in order."""
    model = IdModel()
    requests = [id_rows((1, 2, 3), (10,)), id_rows((4, 4, 4, 4, 4, 6)), id_rows((7, 8), (100, 200, 300), (5,))]

    async def main() -> list[Any]:
        batcher = Batcher(model, BatchSettings(max_padding=None), start=False)
        jobs = [batcher.submit(rows, MEAN) for rows in requests]
        batcher.start()
        results = [await job.future for job in jobs]
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        return results

    results = run(main())
    assert model.batches == [6]
    for rows, got in zip(requests, results, strict=True):
        expected = np.array([[np.mean(r.ids)] * IdModel.HIDDEN for r in rows], dtype=np.float32)
        np.testing.assert_array_equal(got, expected)


class BlockingModel(IdModel):
    """An :class:`IdModel` whose batches wait for ``release``; ``running`` is set when one has started."""

    def __init__(self) -> None:
        super().__init__()
        self.running, self.release = threading.Event(), threading.Event()

    def forward(self, batch: TokenizedBatch, names: Sequence[str]) -> dict[str, np.ndarray]:
        self.running.set()
        assert self.release.wait(30), "the test never released the batch"
        return super().forward(batch, names)


def test_clients_that_submit_and_leave_do_not_grow_the_queue_while_a_round_runs() -> None:
    """Cancelling a request takes its rows out of the queue at once: 10,000 submit-and-leave cycles while a batch
    runs leave nothing queued (they once left 40,000 rows, each cycle let in because nothing counted as in flight)."""
    model = BlockingModel()

    async def main() -> tuple[int, int, Any]:
        batcher = Batcher(model, BatchSettings(max_queue=4))
        first = batcher.submit(id_rows((1, 2)), MEAN)
        await asyncio.get_running_loop().run_in_executor(None, model.running.wait, 30)
        batcher.cancel(first)
        for _ in range(10_000):
            batcher.cancel(batcher.submit(id_rows((3,), (4,), (5,), (6,)), MEAN))
        queued, in_flight = len(batcher._pending), batcher.in_flight
        kept = batcher.submit(id_rows((7, 9)), MEAN)
        model.release.set()
        result = await kept.future
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        return queued, in_flight, result

    queued, in_flight, result = run(main())
    assert queued == 0 and in_flight == 0
    np.testing.assert_array_equal(result, [[8.0] * IdModel.HIDDEN])
    assert model.batches == [1, 1]  # the first request's batch, already running, then the one kept


class RecordingCondition(threading.Condition):
    """A condition that records the timeout of each wait: ``_gather`` waits with one, an idle worker without."""

    def __init__(self) -> None:
        super().__init__()
        self.timed_waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            self.timed_waits.append(timeout)
        return super().wait(timeout)


def recording_batcher(model: Model, **settings: Any) -> tuple[Batcher, RecordingCondition]:
    batcher = Batcher(model, BatchSettings(**settings), start=False)
    cond = RecordingCondition()
    batcher._cond = cond  # before any submit: every wait of the worker goes through it
    return batcher, cond


def test_a_lone_client_never_waits_to_fill_a_round() -> None:
    """One client sending its requests one after another: each finds itself "as many requests as the last round
    answered" and runs at once, however long max_wait_ms is."""
    model = IdModel()

    async def main() -> list[Any]:
        batcher, cond = recording_batcher(model, max_wait_ms=1000)
        batcher.start()
        results = [await batcher.submit(id_rows((i, i + 2)), MEAN).future for i in range(6)]
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        assert cond.timed_waits == []
        return results

    results = run(main())
    assert model.batches == [1] * 6
    assert [float(r[0, 0]) for r in results] == [i + 1.0 for i in range(6)]


def test_a_round_waits_for_the_clients_the_last_round_answered() -> None:
    """Three clients answered together send their next requests a little apart: the worker, seeing fewer pending
    than it just answered, waits (up to max_wait_ms) and runs the three in one batch instead of a lone first one."""
    model = IdModel()

    async def main() -> None:
        batcher, cond = recording_batcher(model, max_wait_ms=1000, max_padding=None)
        first = [batcher.submit(id_rows((i,)), MEAN) for i in range(3)]
        batcher.start()
        for job in first:
            await job.future
        later = [batcher.submit(id_rows((10,)), MEAN)]
        await asyncio.sleep(0.05)  # the other two clients come back later than the first
        later += [batcher.submit(id_rows((i,)), MEAN) for i in (11, 12)]
        assert [float((await job.future)[0, 0]) for job in later] == [10.0, 11.0, 12.0]
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        assert cond.timed_waits, "the worker did not wait for the returning clients"

    run(main())
    assert model.batches == [3, 3]


def test_a_round_waits_no_longer_than_max_wait_for_clients_that_do_not_come_back() -> None:
    model = IdModel()

    async def main() -> None:
        batcher, cond = recording_batcher(model, max_wait_ms=500)
        first = [batcher.submit(id_rows((i,)), MEAN) for i in range(3)]
        batcher.start()
        for job in first:
            await job.future
        last = batcher.submit(id_rows((7, 9)), MEAN)  # the only one of the three to come back
        assert float((await asyncio.wait_for(last.future, 60))[0, 0]) == 8.0
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        assert cond.timed_waits and max(cond.timed_waits) <= 0.5

    run(main())
    assert model.batches == [3, 1]


@pytest.mark.parametrize(
    ("case", "settings"),
    [
        ("max_wait_ms=0 turns waiting off", {"max_wait_ms": 0}),
        ("a batch's worth of tokens is already pending", {"max_wait_ms": 1000, "max_batch_tokens": 4}),
    ],
)
def test_a_round_starts_at_once_when_waiting_cannot_help(case: str, settings: dict[str, Any]) -> None:
    model = IdModel()

    async def main() -> None:
        batcher, cond = recording_batcher(model, max_padding=None, **settings)
        first = [batcher.submit(id_rows((i,)), MEAN) for i in range(3)]
        batcher.start()
        for job in first:
            await job.future
        await batcher.submit(id_rows((1, 2, 3, 4)), MEAN).future  # 4 tokens, fewer requests than last round
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        assert cond.timed_waits == [], case

    run(main())
    assert model.batches == [3, 1]
