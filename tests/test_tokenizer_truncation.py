"""Truncation at every ``max_length`` a caller may ask for gives transformers' ids, from one shared tokenizer.

The runtime cuts a text's tokens itself and then adds the template's special tokens (so no configured tokenizer copy
is kept per ``max_length``: tests/test_serve_memory.py); this checks it against ``BertTokenizer(...,
truncation=True, max_length=N)`` computed here, on real text and edge cases, at lengths from 2 to the model's. A long
text is tokenized only up to a cut point past its first tokens: checked against each kind of tokenizer's own
truncation of the whole text.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from helpers import checkpoint_path
from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend

from bert_onnx.export.corpus import documentation_paragraphs
from bert_onnx.runtime import Encoder
from bert_onnx.runtime.tokenizer import (
    _SPACE_CUT,
    HEAD_CHARS_PER_TOKEN,
    TextTooLargeError,
    TextTooLongError,
    Tokenizer,
    cut_points,
)

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
    with pytest.raises(ValueError, match=r"texts\[5\] is (at least )?\d+ tokens long, over max_length=64"):
        runtime.encodings(TEXTS, 64, truncation=False)


# -- long texts: only the part holding the first max_length tokens is tokenized -----------------------------------

TOKENIZER_KINDS = ("minilm", "roberta", "xlm-roberta", "albert", "deberta-v3", "modernbert", "mpnet")
PIECES = ["hello", "world", "Korea", "naïve", "café", "中文", "字", "don't", "U.S.A.", "x" * 150, "🙂", "e\u0301"]
SEPARATORS = [" ", "", "  ", "\n ", "\t", "\u3000", "\u00a0 "]


def long_texts(seed: int, count: int) -> list[str]:
    """Texts of 10 to 20,000 pieces with every kind of separator, some with no space at all."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        separators = rng.choice([SEPARATORS, [""]])
        pieces = rng.choice([10, 600, 4000, 20000])
        texts.append("".join(rng.choice(PIECES) + rng.choice(separators) for _ in range(pieces)))
    return texts


class Recording:
    """A ``tokenizers.Tokenizer`` stand-in that forwards every call and records the longest text it was given."""

    def __init__(self, backend: Any) -> None:
        self._backend, self.longest = backend, 0

    def encode_batch(self, texts: list[str], *args: Any, **kwargs: Any) -> Any:
        self.longest = max([self.longest, *map(len, texts)])
        return self._backend.encode_batch(texts, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


@pytest.mark.parametrize("key", TOKENIZER_KINDS)
def test_long_texts_give_the_ids_of_the_whole_text(key: str) -> None:
    """Each kind of tokenizer (WordPiece, byte-level BPE, SentencePiece Unigram) cuts a long text where its first
    tokens are known, and gives tokenizers' own truncation of the whole text; truncation off names the first text
    that is too long, with the count of the part read ("at least")."""
    path = checkpoint_path(key) / "tokenizer.json"
    runtime = Tokenizer(Backend.from_file(str(path)), 0)
    assert cut_points(runtime.backend) is not None
    whole = Backend.from_file(str(path))
    whole.no_padding()
    for index, text in enumerate(long_texts(seed=len(key), count=12)):
        max_length = (2, 16, 128, 512)[index % 4]
        whole.enable_truncation(max_length)
        assert list(runtime.encodings([text], max_length)[0].ids) == whole.encode(text).ids, (index, max_length)
    whole.no_truncation()
    texts = ["short", "word " * 100, "word " * 5000]
    with pytest.raises(TextTooLongError) as first:
        runtime.encodings(texts, 64, truncation=False)
    assert first.value.index == 1 and first.value.length == len(whole.encode(texts[1]).ids)
    with pytest.raises(TextTooLongError, match=r"texts\[2\] is at least \d+ tokens long") as later:
        runtime.encodings(texts[2:], 64, truncation=False, first_index=2)
    assert later.value.at_least and 64 < later.value.length < len(whole.encode(texts[2]).ids)


def test_a_megabyte_text_is_read_only_as_far_as_its_first_tokens() -> None:
    path = checkpoint_path("minilm") / "tokenizer.json"
    recording = Recording(Backend.from_file(str(path)))
    runtime = Tokenizer(recording, 0)  # type: ignore[arg-type]
    huge = "word " * 200_000
    assert len(runtime.encodings([huge], 512)[0].ids) == 512
    assert recording.longest <= HEAD_CHARS_PER_TOKEN * 512 + len("word ")
    with pytest.raises(TextTooLongError, match="at least"):
        runtime.encodings([huge], 512, truncation=False)
    assert recording.longest <= HEAD_CHARS_PER_TOKEN * 512 + len("word ")
    with pytest.raises(TextTooLargeError, match=r"texts\[1\] would be tokenized 100000 characters at once"):
        runtime.encodings(["a", "a" * 100_000], 512, max_chars=99_999)  # no space: it cannot be cut


def test_a_tokenizer_not_known_to_split_at_spaces_reads_the_whole_text() -> None:
    """A pre-tokenizer outside the known kinds (here a custom Split) is never cut: the whole text, as before."""
    config = json.loads((checkpoint_path("roberta") / "tokenizer.json").read_text())
    config["pre_tokenizer"] = {
        "type": "Split",
        "pattern": {"Regex": "\\w+| ?[^\\w]"},
        "behavior": "Isolated",
        "invert": False,
    }
    backend = Backend.from_str(json.dumps(config))
    assert cut_points(backend) is None
    recording = Recording(backend)
    text = "word " * 5000
    whole = Backend.from_str(json.dumps(config))
    whole.no_padding()
    whole.enable_truncation(16)
    assert list(Tokenizer(recording, 0).encodings([text], 16)[0].ids) == whole.encode(text).ids  # type: ignore[arg-type]
    assert recording.longest == len(text)


def test_added_tokens_that_could_span_a_cut_turn_that_cut_off() -> None:
    """Added tokens are matched in the raw text before any splitting: one with a space ("new york") turns every
    cut off, one with an ideograph after its first character the cut before ideographs (and, matched on normalized
    text, where BERT's normalizer spaces the ideographs, every cut); the ids stay the whole text's."""
    path = str(checkpoint_path("minilm") / "tokenizer.json")
    for added, text, cut in (
        (AddedToken("new york"), "new york " * 3000, None),
        (AddedToken("中文", normalized=False), "中文" * 6000, _SPACE_CUT),
        (AddedToken("中文", normalized=True), "中文" * 6000, None),
    ):
        backend, whole = Backend.from_file(path), Backend.from_file(path)
        backend.add_tokens([added])
        whole.add_tokens([added])
        whole.no_padding()
        whole.enable_truncation(16)
        found = cut_points(backend)
        assert (found and found.pattern) == cut, added
        assert list(Tokenizer(backend, 0).encodings([text], 16)[0].ids) == whole.encode(text).ids, added


def test_cuts_follow_what_the_normalizer_does_to_ideographs_and_added_tokens() -> None:
    """tokenizers' BertNormalizer isolates the ideographs of its own ranges (not U+2B820..U+2B91F): a text ending
    in one of those keeps its whole last word; an added token matched on normalized text is judged after
    normalizing ("s\\u00a8" becomes "s \\u0308" under NFKC, which could span a cut)."""
    minilm = str(checkpoint_path("minilm") / "tokenizer.json")
    whole = Backend.from_file(minilm)
    whole.no_padding()
    whole.enable_truncation(3)
    text = "unaffable" + "x" * 20 + "\U0002b820"
    assert list(Tokenizer(Backend.from_file(minilm), 0).encodings([text], 3)[0].ids) == whole.encode(text).ids
    deberta = Backend.from_file(str(checkpoint_path("deberta-v3") / "tokenizer.json"))
    assert cut_points(deberta) is not None
    deberta.add_tokens([AddedToken("s\u00a8", normalized=True)])
    assert cut_points(deberta) is None
