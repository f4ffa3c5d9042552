"""Tokenizing for the routes: a request's checked input becomes the token ids the batcher runs.

Texts go through the model's :class:`~bert_onnx.runtime.tokenizer.Tokenizer` (its public methods only), under the
request's ``max_length`` and truncation rule; token-id input (when the server accepts it) is checked against the
vocabulary and wrapped in the tokenizer's own [CLS] ... [SEP]. Every failure is a 4xx :class:`RequestError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bert_onnx.runtime.tokenizer import TextTooLongError, TokenIds, Tokenizer
from bert_onnx.serve.schema import Inputs, RequestError


@dataclass(frozen=True)
class Ids:
    """One text's model input built from token ids (not a ``tokenizers.Encoding``): [CLS] ids [SEP]."""

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

    def __call__(self, inputs: Inputs, max_length: int, truncation: bool, max_tokens: int, hint: str) -> list[TokenIds]:
        """Model inputs, [CLS] and [SEP] included; 422 for a text over ``max_length`` tokens without truncation
        (its message ends with ``hint``) or an id outside the vocabulary; 413 when the request holds more than
        ``max_tokens`` tokens."""
        tokens: list[TokenIds]
        if inputs.texts is not None:
            try:
                tokens = list(self.tokenizer.encodings(inputs.texts, max_length, truncation))
            except TextTooLongError as exc:
                raise RequestError(
                    422,
                    f"input[{exc.index}] is {exc.length} tokens long, over max_length={exc.max_length}; {hint}",
                    param="input",
                ) from None
        else:
            tokens = [self._wrap(i, ids, max_length, truncation, hint) for i, ids in enumerate(inputs.ids or [])]
        total = sum(len(t.ids) for t in tokens)
        if total > max_tokens:
            raise RequestError(413, f"input has {total} tokens, over the limit of {max_tokens} per request", "input")
        return tokens

    def bare_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids without [CLS]/[SEP] and untruncated: what token-id input takes."""
        return [self._ids(self.tokenizer.tokenize(text)) for text in texts]

    def tokens_of(self, ids: Sequence[int]) -> list[str]:
        found = self.tokenizer.convert_ids_to_tokens(ids)
        return [found] if isinstance(found, str) else found

    def _ids(self, tokens: list[str]) -> list[int]:
        found = self.tokenizer.convert_tokens_to_ids(tokens)
        return [found] if isinstance(found, int) else found

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
