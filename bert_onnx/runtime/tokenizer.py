"""Tokenizing: the folder's ``tokenizer.json`` through `tokenizers`, with padding and truncation owned here.

The exported ``tokenizer.json`` is the checkpoint's own tokenizer as transformers builds it (WordPiece, byte-level
BPE or SentencePiece Unigram, with its special tokens and templates), with no padding or truncation baked in; every
call states its own ``max_length`` and padding, so a checkpoint that shipped "pad everything to 128" does not leak
that into our batches. Batches carry exactly the inputs the folder's graph takes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from tokenizers import Encoding
from tokenizers import Tokenizer as _Backend

from bert_onnx import interface
from bert_onnx.errors import InvalidValueError
from bert_onnx.families import TOKEN_TYPE_IDS
from bert_onnx.manifest import ModelFolderError
from bert_onnx.runtime.inputs import check_texts

Padding = Literal["longest", "max_length"]
PADDINGS: tuple[str, ...] = ("longest", "max_length")

# A long text is first tokenized up to a space about this many characters per wanted token in (then 4x further
# while its first max_length tokens are not there yet): truncating a 10 MB text reads a few kB of it.
HEAD_CHARS_PER_TOKEN = 8

# Pipeline parts under which a space that follows a non-space character splits the text into two parts tokenized
# independently: the tokens of text[:cut] are then the first tokens of text. Normalizers map characters or
# grapheme clusters (a space starts a new one); Replace is safe when its pattern cannot match across such a space.
_SPLITTING_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
_REFINING_PRE_TOKENIZERS = {"Punctuation", "Digits", "UnicodeScripts", "CharDelimiterSplit", "ByteLevel", "Metaspace"}
_LOCAL_NORMALIZERS = {
    "BertNormalizer", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents", "Strip", "Nmt", "Precompiled",
    "Prepend", "ByteLevel",
}  # fmt: skip
_WHITESPACE_ONLY_PATTERNS = {" {2,}", "\\s{2,}|[\\n\\r\\t]", "\\s+", "\\s{2,}", " +"}


class TokenIds(Protocol):
    """What padding reads from one text's tokens: a ``tokenizers.Encoding``, or ids a caller built itself (a server
    taking token-id input wraps them in the tokenizer's [CLS] ... [SEP] or <s> ... </s> without a tokenizer call)."""

    @property
    def ids(self) -> Sequence[int]: ...

    @property
    def type_ids(self) -> Sequence[int]: ...


class TextTooLongError(InvalidValueError):
    """A text has more tokens than ``max_length`` and truncation is off.

    ``length`` is the text's token count, or, when ``at_least`` is true, the count of a prefix that already passes
    ``max_length`` (a long text is tokenized only as far as needed: :meth:`Tokenizer.encodings`); :attr:`tokens`
    words either for a message."""

    def __init__(self, index: int, length: int, max_length: int, at_least: bool = False) -> None:
        self.index, self.length, self.max_length, self.at_least = index, length, max_length, at_least
        super().__init__(
            f"texts[{index}] is {self.tokens} tokens long, over max_length={max_length}; pass truncation=True to cut it"
        )

    @property
    def tokens(self) -> str:
        """The length for a message: ``"600"``, or ``"at least 600"``."""
        return f"at least {self.length}" if self.at_least else str(self.length)


def _splits_at_spaces(pre_tokenizer: dict | None) -> bool:
    """Whether the pre-tokenizer splits at every space (and splits nothing back together)."""
    if pre_tokenizer is None:
        return False
    kind = pre_tokenizer.get("type")
    if kind in _SPLITTING_PRE_TOKENIZERS:
        return True
    if kind == "ByteLevel":
        return bool(pre_tokenizer.get("use_regex", True))
    if kind == "Metaspace":
        return bool(pre_tokenizer.get("split", True))
    if kind == "Sequence":
        members = pre_tokenizer.get("pretokenizers", [])
        known = _SPLITTING_PRE_TOKENIZERS | _REFINING_PRE_TOKENIZERS
        return all(m.get("type") in known for m in members) and any(_splits_at_spaces(m) for m in members)
    return False


def _local_normalizer(normalizer: dict | None) -> bool:
    """Whether the normalizer cannot join a character before a space to anything after it."""
    if normalizer is None:
        return True
    kind = normalizer.get("type")
    if kind == "Sequence":
        return all(_local_normalizer(n) for n in normalizer.get("normalizers", []))
    if kind == "Replace":
        pattern = normalizer.get("pattern", {})
        if "String" in pattern:
            return " " not in pattern["String"]
        return pattern.get("Regex") in _WHITESPACE_ONLY_PATTERNS
    return kind in _LOCAL_NORMALIZERS


# Where a long text may be cut: before a space that follows a non-space (and not a grapheme "Prepend" character,
# which joins the space into one cluster that a Precompiled normalizer may map as a whole), and, under BERT's
# normalizer (which puts spaces around each CJK ideograph), before an ideograph: tokenizers' own ranges
# (``is_chinese_char`` in its BertNormalizer, which skips U+2B820..U+2B91F).
_PREPEND = "\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u0d4e\U000110bd\U000110cd\U000111c2\U000111c3"
_PREPEND += "\U0001193f\U00011941\U00011a3a\U00011a84-\U00011a89\U00011d46\U00011f02"
_SPACE_CUT = f"(?<=[^\\s{_PREPEND}]) "
_CJK_CUT = (
    "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002b81f\U0002b920-\U0002ceaf"
    "\U0002f800-\U0002fa1f]"
)


def cut_points(backend: _Backend) -> re.Pattern[str] | None:
    """Where a text's first tokens can be found from the part before (see :meth:`Tokenizer.encodings`): a pattern
    for the tokenizers transformers builds for the BERT families (WordPiece, byte-level BPE, SentencePiece with
    Metaspace), ``None`` for any pipeline not known to split there."""
    try:
        config = json.loads(backend.to_str())
    except ValueError:
        return None
    normalizer = config.get("normalizer")
    if not (_splits_at_spaces(config.get("pre_tokenizer")) and _local_normalizer(normalizer)):
        return None
    # Added tokens are matched before any splitting (on the normalized text when marked normalized): one holding a
    # space ("new york", or "s\u00a8", which NFKC makes "s \u0308") could span a cut, as could one holding an
    # ideograph after its first character.
    normalize = backend.normalizer.normalize_str if backend.normalizer is not None else str
    added: list[str] = []
    for token in config.get("added_tokens") or []:
        content = str(token.get("content", ""))
        added += [content, normalize(content)] if token.get("normalized") else [content]
    if any(any(c.isspace() for c in content) for content in added):
        return None
    # CJK cuts only where the normalizer is seen to isolate ideographs, and no added token holds one after its start
    cjk = normalize("a\u4e00b") == "a \u4e00 b" and isinstance(normalizer, dict)
    cjk = cjk and normalizer.get("type") == "BertNormalizer"
    cjk = cjk and not any(re.search(_CJK_CUT, content[1:]) for content in added)
    return re.compile(f"{_SPACE_CUT}|{_CJK_CUT}" if cjk else _SPACE_CUT)


def head(text: str, chars: int, cuts: re.Pattern[str] | None) -> str:
    """``text`` cut at the first of ``cuts`` at or after ``chars`` characters (``text`` itself when it is no longer,
    has no such point, or ``cuts`` is ``None``)."""
    if cuts is None or len(text) <= chars:
        return text
    found = cuts.search(text, max(chars, 1))
    return text if found is None else text[: found.start()]


class TextTooLargeError(InvalidValueError):
    """A text would need more than ``max_chars`` characters tokenized at once (``Tokenizer.encodings``)."""

    def __init__(self, index: int, chars: int, max_chars: int) -> None:
        super().__init__(
            f"texts[{index}] would be tokenized {chars} characters at once, over max_chars={max_chars}: a long text "
            "is read only up to a space (or CJK character) past its first max_length tokens, and this one has no such "
            "point (or its tokenizer cannot be cut)"
        )
        self.index, self.chars, self.max_chars = index, chars, max_chars


@dataclass(frozen=True)
class TokenizedBatch:
    """int64 arrays of shape (batch, sequence), right-padded with the pad id and mask 0; ``token_type_ids`` only
    where the graph takes segment ids (``None`` otherwise)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray | None

    def feeds(self) -> dict[str, np.ndarray]:
        """The graph's inputs by name: exactly those it takes."""
        feeds = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            feeds[TOKEN_TYPE_IDS] = self.token_type_ids
        return feeds


class Tokenizer:
    """The exported checkpoint's tokenization, identical to its transformers tokenizer (``BertTokenizer`` for BERT,
    ``RobertaTokenizer`` for RoBERTa, ...).

    ``tokenize`` and ``convert_tokens_to_ids`` mirror transformers' methods (the tutorial's manual path);
    ``__call__`` turns a list of texts into padded arrays of the graph's ``input_names`` (default: BERT's three).
    """

    def __init__(
        self, backend: _Backend, pad_token_id: int, input_names: Sequence[str] = interface.INPUT_NAMES
    ) -> None:
        backend.no_padding()
        backend.no_truncation()
        self._backend = backend
        self._cuts = cut_points(backend)
        self.pad_token_id = pad_token_id
        interface.input_axes(input_names)  # checks the names
        self.input_names = tuple(input_names)

    @classmethod
    def from_file(
        cls, path: str | Path, pad_token_id: int, input_names: Sequence[str] = interface.INPUT_NAMES
    ) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise ModelFolderError(f"{path}: missing tokenizer file")
        try:
            backend = _Backend.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for any unreadable file
            raise ModelFolderError(f"{path}: not a readable tokenizers file ({exc})") from exc
        return cls(backend, pad_token_id, input_names)

    @property
    def backend(self) -> _Backend:
        """The underlying `tokenizers.Tokenizer` (no padding, no truncation)."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    def tokenize(self, text: str) -> list[str]:
        """Tokens of ``text`` without [CLS]/[SEP] (or <s>/</s>), like transformers' ``tokenize``."""
        check_texts([text])
        return list(self._backend.encode_batch([text], add_special_tokens=False)[0].tokens)  # encode holds the GIL

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Vocabulary ids of ``tokens``; unknown tokens map to the unknown token's id, as in transformers."""
        if isinstance(tokens, str):
            return self._token_id(tokens)
        return [self._token_id(token) for token in tokens]

    def _token_id(self, token: str) -> int:
        found = self._backend.token_to_id(token)
        if found is not None:
            return int(found)
        unk = getattr(self._backend.model, "unk_token", None)
        unk_id = None if unk is None else self._backend.token_to_id(unk)
        if unk_id is None:
            raise InvalidValueError(f"token {token!r} is not in the vocabulary and the tokenizer has no unknown token")
        return int(unk_id)

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int | np.integer):
            return self._token(int(ids))
        return [self._token(int(i)) for i in ids]

    def _token(self, token_id: int) -> str:
        token = self._backend.id_to_token(token_id)
        if token is None:
            raise InvalidValueError(f"id {token_id} is outside the vocabulary [0, {self.vocab_size})")
        return str(token)

    def _truncate(self, text: str, max_length: int) -> Encoding:
        # What `enable_truncation(max_length)` does inside `tokenizers` (cut a text's tokens to leave room for the
        # special tokens, then apply the template), on the one shared tokenizer: configuring a copy per max_length
        # let any client grow a server's memory by ~6 MB per value it sent.
        room = max(0, max_length - self._backend.num_special_tokens_to_add(False))
        bare = self._backend.encode_batch([text], add_special_tokens=False)[0]  # releases the GIL; encode does not
        bare.truncate(room)
        return self._backend.post_process(bare)

    def encodings(
        self,
        texts: Sequence[str],
        max_length: int,
        truncation: bool = True,
        first_index: int = 0,
        max_chars: int | None = None,
    ) -> list[Encoding]:
        """Unpadded encodings with the tokenizer's special tokens, at most ``max_length`` tokens each.

        ``truncation=True`` cuts longer texts to ``max_length`` tokens (keeping the final [SEP], like transformers);
        ``truncation=False`` raises ``TextTooLongError`` (a ``ValueError``) naming the first text that is too long,
        by its index plus ``first_index`` (for callers that pass a slice of their texts).

        A text longer than :data:`HEAD_CHARS_PER_TOKEN` characters per token of ``max_length`` is tokenized only up
        to the first cut point past there (a space after a non-space; under BERT's normalizer also a CJK ideograph),
        then 4x further while that part has no more than ``max_length`` tokens, up to the whole text. Where the
        tokenizer splits at those points (:func:`cut_points`), the tokens of that part are the text's first tokens:
        the ids are the same, and truncating a 10 MB text costs what a few kB cost. ``max_chars``: refuse
        (``TextTooLargeError``) a text that would need more characters than that tokenized at once (one with no
        point to cut at, or under a tokenizer that cannot be cut).
        """
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise InvalidValueError(f"max_length={max_length!r} must be an int >= 2 (room for [CLS] and [SEP])")
        texts = list(texts)
        found: list[Encoding | None] = [None] * len(texts)
        todo = list(range(len(texts)))
        chars = HEAD_CHARS_PER_TOKEN * max_length
        too_long: TextTooLongError | None = None  # the first text found too long (the lowest index)
        while todo:
            heads = [head(texts[i], chars, self._cuts) for i in todo]
            if max_chars is not None:
                for i, part in zip(todo, heads, strict=True):
                    if len(part) > max_chars:
                        raise TextTooLargeError(first_index + i, len(part), max_chars)
            again = []
            for i, part, encoding in zip(todo, heads, self._backend.encode_batch(heads), strict=True):
                whole = len(part) == len(texts[i])
                if len(encoding.ids) <= max_length:
                    if whole:
                        found[i] = encoding
                    else:
                        again.append(i)  # the first max_length tokens may lie further on: read more of the text
                elif truncation:
                    found[i] = self._truncate(part, max_length)
                elif too_long is None or first_index + i < too_long.index:
                    too_long = TextTooLongError(first_index + i, len(encoding.ids), max_length, at_least=not whole)
            if too_long is not None:  # only an earlier text can be the first too long now
                again = [i for i in again if first_index + i < too_long.index]
            todo, chars = again, max(chars, *map(len, heads)) * 4  # past the longest part read, or the same cut
        if too_long is not None:
            raise too_long
        return found  # type: ignore[return-value]  # every index was found

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text with its special tokens, untruncated."""
        return [len(e.ids) for e in self._backend.encode_batch(list(texts))]

    def pad(self, encodings: Sequence[TokenIds], padding: Padding, max_length: int) -> TokenizedBatch:
        """Right-pad encodings into (batch, sequence) int64 arrays."""
        if padding not in PADDINGS:
            raise InvalidValueError(f"padding={padding!r} is not one of {', '.join(PADDINGS)}")
        lengths = [len(e.ids) for e in encodings]
        width = max_length if padding == "max_length" else max(lengths, default=0)
        input_ids = np.full((len(encodings), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(encodings), width), dtype=np.int64)
        segments = TOKEN_TYPE_IDS in self.input_names
        token_type_ids = np.zeros((len(encodings), width), dtype=np.int64) if segments else None
        for row, (encoding, length) in enumerate(zip(encodings, lengths, strict=True)):
            input_ids[row, :length] = encoding.ids
            attention_mask[row, :length] = 1
            if token_type_ids is not None:
                token_type_ids[row, :length] = encoding.type_ids
        return TokenizedBatch(input_ids, attention_mask, token_type_ids)

    def __call__(
        self,
        texts: str | Sequence[str],
        max_length: int = 512,
        padding: Padding = "longest",
        truncation: bool = True,
    ) -> TokenizedBatch:
        """Tokenize a batch of texts into padded arrays (a single string is a batch of one)."""
        batch = check_texts(texts)
        if padding not in PADDINGS:
            raise InvalidValueError(f"padding={padding!r} is not one of {', '.join(PADDINGS)}")
        return self.pad(self.encodings(batch, max_length, truncation), padding, max_length)
