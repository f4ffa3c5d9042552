"""Converting the checkpoint's tokenizer into a plain ``tokenizer.json`` the runtime can load with `tokenizers`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from bert_onnx._files import atomic_write_text
from bert_onnx.export.errors import ExportError


@dataclass(frozen=True)
class ConvertedTokenizer:
    reference: Any  # the transformers tokenizer, for validation at export
    pad_token_id: int
    model_max_length: int | None


def convert_tokenizer(checkpoint: Path, vocab_size: int, target: Path) -> ConvertedTokenizer:
    """Write ``target`` from the checkpoint's tokenizer, with any baked-in padding and truncation cleared.

    transformers builds the fast tokenizer (converting vocab.txt when the checkpoint has no tokenizer.json), so
    lower-casing, accent stripping and CJK splitting follow the checkpoint's tokenizer_config.
    """
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=False)
    backend = getattr(reference, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"{checkpoint}: transformers could not build a fast tokenizer for this checkpoint")
    if reference.pad_token_id is None:
        raise ExportError(f"{checkpoint}: the tokenizer has no pad token")
    if len(reference) > vocab_size:
        raise ExportError(
            f"{checkpoint}: the tokenizer has {len(reference)} tokens but the model embeds only {vocab_size}"
        )
    plain = Tokenizer.from_str(backend.to_str())
    plain.no_padding()
    plain.no_truncation()
    atomic_write_text(target, plain.to_str(pretty=True))
    limit = getattr(reference, "model_max_length", None)
    return ConvertedTokenizer(
        reference=reference,
        pad_token_id=int(reference.pad_token_id),
        model_max_length=int(limit) if isinstance(limit, int) and limit < 1_000_000 else None,
    )
