"""Tokenizing: the folder's ``tokenizer.json`` through `tokenizers`, with padding and truncation owned here.

The exported ``tokenizer.json`` is the checkpoint's own tokenizer as transformers builds it (WordPiece, byte-level
BPE or SentencePiece Unigram, with its special tokens and templates), with no padding or truncation baked in; every
call states its own ``max_length`` and padding, so a checkpoint that shipped "pad everything to 128" does not leak
that into our batches. Batches carry exactly the inputs the folder's graph takes.
"""

from __future__ import annotations

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


class TokenIds(Protocol):
    """What padding reads from one text's tokens: a ``tokenizers.Encoding``, or ids a caller built itself (a server
    taking token-id input wraps them in the tokenizer's [CLS] ... [SEP] or <s> ... </s> without a tokenizer call)."""

    @property
    def ids(self) -> Sequence[int]: ...

    @property
    def type_ids(self) -> Sequence[int]: ...


class TextTooLongError(InvalidValueError):
    """A text has more tokens than ``max_length`` and truncation is off."""

    def __init__(self, index: int, length: int, max_length: int) -> None:
        super().__init__(
            f"texts[{index}] is {length} tokens long, over max_length={max_length}; pass truncation=True to cut it"
        )
        self.index, self.length, self.max_length = index, length, max_length


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
        return list(self._backend.encode(text, add_special_tokens=False).tokens)

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

    def _truncated(self, texts: list[str], max_length: int) -> list[Encoding]:
        # What `enable_truncation(max_length)` does inside `tokenizers` (cut a text's tokens to leave room for the
        # special tokens, then apply the template), on the one shared tokenizer: configuring a copy per max_length
        # let any client grow a server's memory by ~6 MB per value it sent. Only the texts that are too long are
        # tokenized again, so short texts cost what they did.
        encodings = self._backend.encode_batch(texts)
        long = [index for index, encoding in enumerate(encodings) if len(encoding.ids) > max_length]
        if long:
            room = max(0, max_length - self._backend.num_special_tokens_to_add(False))
            bare = self._backend.encode_batch([texts[index] for index in long], add_special_tokens=False)
            for index, encoding in zip(long, bare, strict=True):
                encoding.truncate(room)
                encodings[index] = self._backend.post_process(encoding)
        return encodings

    def encodings(
        self, texts: Sequence[str], max_length: int, truncation: bool = True, first_index: int = 0
    ) -> list[Encoding]:
        """Unpadded encodings with the tokenizer's special tokens, at most ``max_length`` tokens each.

        ``truncation=True`` cuts longer texts to ``max_length`` tokens (keeping the final [SEP], like transformers);
        ``truncation=False`` raises ``TextTooLongError`` (a ``ValueError``) naming the first text that is too long,
        by its index plus ``first_index`` (for callers that pass a slice of their texts).
        """
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise InvalidValueError(f"max_length={max_length!r} must be an int >= 2 (room for [CLS] and [SEP])")
        if truncation:
            return self._truncated(list(texts), max_length)
        encodings = list(self._backend.encode_batch(list(texts)))
        for index, encoding in enumerate(encodings):
            if len(encoding.ids) > max_length:
                raise TextTooLongError(first_index + index, len(encoding.ids), max_length)
        return encodings

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
