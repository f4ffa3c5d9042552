"""A real-text corpus for gates and calibration that needs no download: Python's own reference documentation.

``pydoc_data.topics`` ships with CPython (it is what ``help("if")`` prints): English prose written by the Python
documentation authors, not by us. Split into paragraphs, it gives a few thousand varied texts, deterministic for a
given Python version.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from bert_onnx.errors import InvalidValueError


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


def split(count: int, calibration: int = 0, seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint (evaluation, calibration) samples, so a gate is never measured on the data it was tuned on."""
    paragraphs = list(documentation_paragraphs())
    if count + calibration > len(paragraphs):
        raise InvalidValueError(f"asked for {count + calibration} texts; the corpus has {len(paragraphs)}")
    random.Random(seed).shuffle(paragraphs)
    return paragraphs[:count], paragraphs[count : count + calibration]
