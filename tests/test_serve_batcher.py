"""The server's batcher on its own, in process, on the tiny checkpoint: no HTTP, no subprocess.

``Batcher(start=False)`` lets a test queue several requests before the worker takes them, so "one round merges
requests" is checked deterministically. Every result is compared with ``Encoder.embed``/``encode`` of the same
texts alone. Also: the padding bound of ``length_sorted_batches`` that the batcher uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bert_onnx.export.corpus import documentation_paragraphs
from bert_onnx.runtime import EmbedRecipe, Encoder
from bert_onnx.runtime.batching import length_sorted_batches
from bert_onnx.serve.batcher import Batcher, Outputs, QueueFull

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
        batcher = Batcher(tiny, max_padding=None, start=False, on_batch=lambda n, *_: batches.append(n))
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
        batcher = Batcher(tiny, max_queue=4, start=False)
        batcher.submit(tokens(tiny, TEXTS[:3]), pooling(tiny))
        with pytest.raises(QueueFull, match="3 texts in flight, this request adds 2, the limit is 4") as refused:
            batcher.submit(tokens(tiny, TEXTS[:2]), pooling(tiny))
        assert refused.value.retry_after >= 1
        last = batcher.submit(tokens(tiny, TEXTS[:1]), pooling(tiny))
        batcher.start()
        await last.future
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)

        alone = Batcher(tiny, max_queue=4)
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


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on(encoder: Callable[[str], Encoder]) -> None:
    tiny = encoder("tiny")
    calls: list[int] = []

    def run_once_broken(names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the backend failed")
        return tiny.runner.run(names, feeds)

    broken = SimpleNamespace(
        tokenizer=tiny.tokenizer,
        max_length=tiny.max_length,
        hidden_size=tiny.hidden_size,
        runner=SimpleNamespace(run=run_once_broken),
    )

    async def main() -> Any:
        batcher = Batcher(broken, max_padding=None)  # type: ignore[arg-type]  # duck-typed encoder
        first = batcher.submit(tokens(tiny, TEXTS[:2]), pooling(tiny))
        with pytest.raises(RuntimeError, match="the backend failed"):
            await first.future
        second = batcher.submit(tokens(tiny, TEXTS[:2]), pooling(tiny))
        result = await second.future
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        assert batcher.in_flight == 0
        return result

    np.testing.assert_allclose(run(main()), tiny.embed(TEXTS[:2]), rtol=0, atol=1e-5)
