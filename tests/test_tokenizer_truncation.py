"""Truncation at every ``max_length`` a caller may ask for gives transformers' ids, from one shared tokenizer.

The runtime cuts a text's tokens itself and then adds the template's special tokens (so no configured tokenizer copy
is kept per ``max_length``: tests/test_serve_memory.py); this checks it against ``BertTokenizer(...,
truncation=True, max_length=N)`` computed here, on real text and edge cases, at lengths from 2 to the model's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
from helpers import checkpoint_path

from bert_onnx.export.corpus import documentation_paragraphs
from bert_onnx.runtime import Encoder

LENGTHS = (2, 3, 4, 5, 7, 8, 13, 31, 64, 127, 128, 129, 255, 384, 511, 512)
EDGE = [
    "",
    " ",
    "a",
    "I love Korea",
    "[CLS] [SEP] [PAD] [MASK] written in the text",
    "héllo wörld — 日本語のテキスト 🙂 " * 40,
    "unaffable " * 300,
    "x" * 5000,
]
TEXTS = [*EDGE, *documentation_paragraphs()[:150]]


@pytest.fixture(scope="module")
def reference() -> Callable[[str], Any]:
    from transformers import BertTokenizer

    return functools.cache(lambda key: BertTokenizer.from_pretrained(checkpoint_path(key)))


@pytest.mark.parametrize("key", ["minilm", "tiny"])
def test_truncated_ids_equal_transformers_at_every_length(
    key: str, encoder: Callable[[str], Encoder], reference: Callable[[str], Any]
) -> None:
    runtime, expected = encoder(key).tokenizer, reference(key)
    assert max(len(e.ids) for e in runtime.encodings(TEXTS, 512)) == 512  # some texts are cut at every length
    for max_length in LENGTHS:
        want = expected(TEXTS, truncation=True, max_length=max_length)
        got = runtime.encodings(TEXTS, max_length)
        for index, (encoding, ids) in enumerate(zip(got, want["input_ids"], strict=True)):
            assert list(encoding.ids) == ids, (max_length, TEXTS[index][:80])
            assert list(encoding.type_ids) == want["token_type_ids"][index]
        batch = runtime(TEXTS, max_length=max_length)  # the padded path Encoder.encode takes
        for row, ids in enumerate(want["input_ids"]):
            assert batch.input_ids[row][batch.attention_mask[row] == 1].tolist() == ids


def test_untruncated_texts_are_unchanged_and_too_long_ones_are_named(encoder: Callable[[str], Encoder]) -> None:
    runtime = encoder("tiny").tokenizer
    full = [list(e.ids) for e in runtime.encodings(TEXTS[:4], 512, truncation=False)]
    assert full[3] == [101, 1045, 2293, 4420, 102]
    assert [list(e.ids) for e in runtime.encodings(TEXTS[:4], 512)] == full
    with pytest.raises(ValueError, match=r"texts\[5\] is \d+ tokens long, over max_length=64"):
        runtime.encodings(TEXTS, 64, truncation=False)
