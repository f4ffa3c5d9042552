"""One ``Encoder`` shared by 8 threads gives exactly the results of serial calls.

The encoder holds one ONNX Runtime session, whose ``run`` is thread-safe, and a tokenizer whose per-length copies
are created under a lock; nothing else is mutable. Sharing one session keeps one copy of the weights in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bert_onnx.export.corpus import documentation_paragraphs
from bert_onnx.runtime import Encoder

THREADS = 8


def _jobs(encoder: Encoder) -> list[Callable[[], Any]]:
    texts = list(documentation_paragraphs())[:96]
    rng = np.random.default_rng(0)
    jobs: list[Callable[[], Any]] = []
    for i in range(48):
        chunk = texts[(i * 5) % 90 : (i * 5) % 90 + 6]
        kind = i % 4
        if kind == 0:
            jobs.append(lambda chunk=chunk: encoder.embed(chunk, pooling="mean", batch_size=4))
        elif kind == 1:
            # A fresh max_length makes threads race to create the tokenizer's truncating copy.
            jobs.append(lambda chunk=chunk, n=16 + i: encoder.embed(chunk, layers=[-2, -1], max_length=n))
        elif kind == 2:
            jobs.append(lambda chunk=chunk: encoder.encode(chunk).hidden_states)
        else:
            ids = rng.integers(1000, 2000, size=(3, 5 + i))
            jobs.append(lambda ids=ids: encoder.run(ids).last_hidden_state)
    return jobs


def _flatten(result: Any) -> list[np.ndarray]:
    return list(result) if isinstance(result, tuple) else [result]


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_eight_threads_match_serial(variants_dir: Path, variant: str) -> None:
    encoder = Encoder(variants_dir, variant=variant)
    serial = [_flatten(job()) for job in _jobs(encoder)]
    barrier = threading.Barrier(THREADS)
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda _: barrier.wait(), range(THREADS)))  # all 8 threads exist before the jobs start
        parallel = [_flatten(r) for r in pool.map(lambda job: job(), _jobs(encoder))]
    assert len(parallel) == len(serial)
    for number, (a, b) in enumerate(zip(serial, parallel, strict=True)):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"job {number}")
