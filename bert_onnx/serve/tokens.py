"""Tokenizing for the routes: a request's checked input becomes the token ids the batcher runs.

Texts go through the model's :class:`~bert_onnx.runtime.tokenizer.Tokenizer` (its public methods only), under the
request's ``max_length`` and truncation rule; token-id input (when the server accepts it) is checked against the
vocabulary and wrapped in the tokenizer's own [CLS] ... [SEP]. Every failure is a 4xx :class:`RequestError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bert_onnx.runtime.tokenizer import TextTooLargeError, TextTooLongError, Tokenizer
from bert_onnx.serve.schema import Inputs, RequestError

# Characters of text tokenized in one call (a longer text alone): at ~700 bytes per token in a
# ``tokenizers.Encoding``, one chunk's encodings take tens of MB at most before they become plain ids.
CHUNK_CHARS = 256 << 10


def _chunks(texts: list[str], max_chars: int | None) -> Iterator[tuple[int, list[str]]]:
    """``(index of the first, texts)`` of consecutive texts adding up to about :data:`CHUNK_CHARS` characters, each
    counted at most ``max_chars`` (what tokenizing it can cost)."""
    start, size = 0, 0
    for index, text in enumerate(texts):
        size += len(text) if max_chars is None else min(len(text), max_chars)
        if size >= CHUNK_CHARS:
            yield start, texts[start : index + 1]
            start, size = index + 1, 0
    if start < len(texts):
        yield start, texts[start:]


@dataclass(frozen=True)
class Ids:
    """One text's model input as plain ids, [CLS] ... [SEP] included: from a text (a ``tokenizers.Encoding`` holds
    ~700 bytes per token, a tuple of ids far less) or from token ids a client sent."""

    ids: tuple[int, ...]
    type_ids: tuple[int, ...]


class RouteTokenizer:
    """Turns checked :class:`~bert_onnx.serve.schema.Inputs` into model inputs, and answers ``/tokenize``.

    ``vocab_size`` is the model's (its embedding table's rows): token ids at or above it are refused.
    """

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        wrapped = tokenizer.encodings([""], max_length=2)[0].ids  # [CLS] [SEP]: how the tokenizer wraps a text
        self.cls, self.sep = wrapped[0], wrapped[-1]

    def __call__(
        self,
        inputs: Inputs,
        max_length: int,
        truncation: bool,
        max_tokens: int,
        hint: str,
        max_chars: int | None = None,
    ) -> list[Ids]:
        """Model inputs, [CLS] and [SEP] included; 422 for a text over ``max_length`` tokens without truncation
        (its message ends with ``hint``) or an id outside the vocabulary; 413 when the request holds more than
        ``max_tokens`` tokens, or a text would be tokenized more than ``max_chars`` characters at once.

        Texts are tokenized a chunk at a time (:data:`CHUNK_CHARS`) into plain :class:`Ids`, and tokenizing stops
        once ``max_tokens`` is passed: what a request holds while it is tokenized is bounded by its tokens, not by
        its texts' length."""
        if inputs.texts is None:
            tokens = [self._wrap(i, ids, max_length, truncation, hint) for i, ids in enumerate(inputs.ids or [])]
        else:
            tokens = []
            for first, chunk in _chunks(inputs.texts, max_chars):
                tokens += self._texts(chunk, first, max_length, truncation, hint, max_chars)
                if sum(len(t.ids) for t in tokens) > max_tokens:
                    break
        total = sum(len(t.ids) for t in tokens)
        if total > max_tokens:
            some = "" if len(tokens) == len(inputs) else f" in its first {len(tokens)} texts"
            raise RequestError(
                413, f"input has {total} tokens{some}, over the limit of {max_tokens} per request", "input"
            )
        return tokens

    def _texts(
        self, texts: list[str], first: int, max_length: int, truncation: bool, hint: str, max_chars: int | None
    ) -> list[Ids]:
        try:
            found = self.tokenizer.encodings(texts, max_length, truncation, first, max_chars)
        except TextTooLongError as exc:
            raise RequestError(
                422,
                f"input[{exc.index}] is {exc.tokens} tokens long, over max_length={exc.max_length}; {hint}",
                param="input",
            ) from None
        except TextTooLargeError as exc:
            raise RequestError(
                413,
                f"input[{exc.index}] would be tokenized {exc.chars} characters at once, over this server's limit of "
                f"{exc.max_chars} (max_text_chars): a long text is read only up to a space past its first max_length "
                "tokens, and this one has no space there; send a shorter text",
                param="input",
            ) from None
        return [Ids(tuple(e.ids), tuple(e.type_ids)) for e in found]

    def tokens_of(self, ids: Sequence[int]) -> list[str]:
        found = self.tokenizer.convert_ids_to_tokens(ids)
        return [found] if isinstance(found, str) else found

    def _wrap(self, index: int, ids: list[int], max_length: int, truncation: bool, hint: str) -> Ids:
        low, high = min(ids), max(ids)
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise RequestError(
                422,
                f"input[{index}][{ids.index(bad)}] = {bad} is outside the vocabulary [0, {self.vocab_size})",
                param="input",
            )
        if len(ids) + 2 > max_length:
            if not truncation:
                raise RequestError(
                    422,
                    f"input[{index}] is {len(ids) + 2} tokens long with [CLS] and [SEP], over "
                    f"max_length={max_length}; {hint}",
                    param="input",
                )
            ids = ids[: max_length - 2]  # as the tokenizer truncates a text: the final [SEP] stays
        full = (self.cls, *ids, self.sep)
        return Ids(full, (0,) * len(full))
