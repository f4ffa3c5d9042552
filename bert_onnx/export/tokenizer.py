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

    A checkpoint without its tokenizer's vocabulary is refused: transformers would build a tokenizer of the special
    tokens alone, every word would become the unknown token and every text the same vector.
    """
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=False)
    backend = getattr(reference, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"{checkpoint}: transformers could not build a fast tokenizer for this checkpoint")
    _check_vocabulary(checkpoint, reference, vocab_size)
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


# A real tokenizer covers most of the embedding rows (a trimmed one may cover a fifth); one of its special tokens
# alone covers a handful. The line between them is far from both.
MIN_VOCABULARY_SHARE = 0.01


def _check_vocabulary(checkpoint: Path, reference: Any, vocab_size: int) -> None:
    """Refuse a tokenizer built without the checkpoint's vocabulary (no vocabulary file, or a few tokens only)."""
    names = sorted(set(getattr(reference, "vocab_files_names", {}).values()) or {"tokenizer.json"})
    if not any((checkpoint / name).is_file() for name in names):
        raise ExportError(
            f"{checkpoint}: no tokenizer files (looked for {', '.join(names)} for its {type(reference).__name__}); "
            f"without them transformers builds a tokenizer of {len(reference)} special tokens, which turns every "
            "word into the unknown token. Copy the tokenizer files of the model it was trained from into that folder"
        )
    if len(reference) < MIN_VOCABULARY_SHARE * vocab_size:
        found = ", ".join(name for name in names if (checkpoint / name).is_file())
        raise ExportError(
            f"{checkpoint}: the tokenizer ({found}) has {len(reference)} tokens, under "
            f"{MIN_VOCABULARY_SHARE:.0%} of the model's vocab_size {vocab_size}: its vocabulary is missing or is not "
            "this model's. Copy the tokenizer files of the model it was trained from into that folder"
        )
