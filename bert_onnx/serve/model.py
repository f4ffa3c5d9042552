"""``Model``: all the batcher sees of the model it runs, so nothing in the server reaches into an ``Encoder``.

:class:`~bert_onnx.runtime.Encoder` implements it (``Encoder.pad`` and ``Encoder.forward``); a test can hand the
batcher any small object that does. Tokenizing is not part of it: the routes tokenize
(:mod:`~bert_onnx.serve.tokens`) and the batcher receives token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from bert_onnx.runtime.tokenizer import TokenIds, TokenizedBatch


class Model(Protocol):
    """Pad tokenized texts into one batch, and run a batch for the graph outputs named.

    ``pad`` takes each text's tokens (``[CLS]`` and ``[SEP]`` included, at most the model's ``max_length``) and
    returns them right-padded to the longest; ``forward`` returns ``{name: array}`` for exactly ``names``, token
    states ``(batch, sequence, hidden)`` and ``pooler_output`` ``(batch, hidden)``. The result arrays the batcher
    returns are shaped from what ``forward`` and the pooling give, so it needs neither the hidden size nor the
    recipe's output dimension.
    """

    def pad(self, tokens: Sequence[TokenIds]) -> TokenizedBatch: ...

    def forward(self, batch: TokenizedBatch, names: Sequence[str]) -> dict[str, np.ndarray]: ...
