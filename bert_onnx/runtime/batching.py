"""How texts become batches: sorted by length, longest first, under a row and a padded-token budget.

One function for every caller that embeds many texts (``Encoder.embed`` and the export's int8 gate), so the gate
measures exactly the batches users get. A text's result does not depend on its batch (README "Guarantees"), so
batching decides speed and memory only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from bert_onnx.runtime.tokenizer import TokenizedBatch, Tokenizer


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int, max_padding: float | None = None
) -> Iterator[list[int]]:
    """Indices into ``lengths``, grouped: longest first, each group at most ``batch_size`` rows and at most
    ``max_tokens`` padded tokens (its longest row times its rows; a row longer than the budget goes alone).

    Similar lengths share a batch, so little is padding; the longest batch comes first, so memory peaks early.
    ``max_padding`` (e.g. 0.25) also closes a group before its padding would pass that fraction of its real
    tokens: a server batching the few texts in flight at one moment gets groups of similar length (smaller, but
    with little padding) instead of full groups whose lengths differ widely. ``None``: groups are as full as the
    two budgets allow (what ``Encoder.embed`` does, sorting thousands of texts at a time).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    start = 0
    while start < len(order):
        width = max(1, lengths[order[start]])  # the group's longest row: its first
        limit = max(1, min(batch_size, max_tokens // width))
        rows = 1
        real = lengths[order[start]]
        while rows < limit and start + rows < len(order):
            length = lengths[order[start + rows]]
            if max_padding is not None and (rows + 1) * width > (1 + max_padding) * (real + length):
                break
            real += length
            rows += 1
        yield order[start : start + rows]
        start += rows


def tokenized_batches(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    max_length: int,
    truncation: bool = True,
    batch_size: int = 32,
    max_tokens: int = 8192,
    first_index: int = 0,
    check: Callable[[list[int]], object] | None = None,
) -> Iterator[tuple[list[int], TokenizedBatch]]:
    """``(rows, batch)`` pairs covering ``texts``: the indices of the texts in the batch, and the batch padded to
    its own longest text. ``first_index`` only offsets the index named in a too-long-text error. ``check`` is
    called with every text's token count before the first batch is made: a caller's refusal comes before any run."""
    encodings = tokenizer.encodings(texts, max_length, truncation, first_index=first_index)
    if check is not None:
        check([len(e.ids) for e in encodings])
    for rows in length_sorted_batches([len(e.ids) for e in encodings], batch_size, max_tokens):
        yield rows, tokenizer.pad([encodings[i] for i in rows], "longest", max_length)
