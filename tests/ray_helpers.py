"""Helpers Ray workers import by name (tests/ is on their PYTHONPATH): an embedder whose process dies once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from bert_onnx.integrations.ray import RayEmbedder


class DiesOnce(RayEmbedder):
    """Kills its own worker process on the first call made after ``marker`` exists (claimed by one actor only)."""

    def __init__(self, marker: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker = Path(marker)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        claimed = self.marker.with_suffix(".claimed")
        try:
            os.rename(self.marker, claimed)  # atomic: exactly one call wins
        except FileNotFoundError:
            return super().__call__(batch)
        os._exit(1)  # the actor dies mid-task, as on a lost node
