"""Shared fixtures: one export per checkpoint per session, PyTorch reference models, and encoders.

Checkpoints come from the cache `make checkpoints` fills (BERT_ONNX_CACHE, default .cache):
  tiny   (a) 2 layers, hidden 32, random weights: fast unit tests
  minilm (b) real pretrained 6-layer BERT (all-MiniLM-L6-v2), bert-base-uncased vocabulary
  base   (c) bert-base-uncased's architecture with seeded RANDOM weights: full-size parity
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bert_onnx import interface

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("BERT_ONNX_CACHE", ROOT / ".cache"))
CHECKPOINT_NAMES = {
    "tiny": "tiny-random-bert",
    "minilm": "all-MiniLM-L6-v2",
    "base": "bert-base-uncased-arch-random-weights",
}


def checkpoint_path(key: str) -> Path:
    path = CACHE / "checkpoints" / CHECKPOINT_NAMES[key]
    if not (path / "config.json").is_file():
        raise RuntimeError(f"checkpoint {path} is missing: run `make checkpoints` (or `make test`) first")
    return path


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep ONNX Runtime's optimized-graph cache of this test session out of the user's ~/.cache."""
    from bert_onnx.runtime.session import CACHE_ENV

    folder = tmp_path_factory.mktemp("session-cache")
    os.environ[CACHE_ENV] = str(folder)
    return folder


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``export_dir(key)``: the checkpoint's model folder, exported once per test session."""
    from bert_onnx.export import export_model

    folders: dict[str, Path] = {}

    def get(key: str) -> Path:
        if key not in folders:
            target = tmp_path_factory.mktemp(f"export-{key}") / "model"
            export_model(str(checkpoint_path(key)), target, log=lambda message: None)
            folders[key] = target
        return folders[key]

    return get


@pytest.fixture(scope="session")
def variants_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real pretrained weights (b) exported with fp32, opt and int8, once per session."""
    from bert_onnx.export import export_model

    target = tmp_path_factory.mktemp("variants") / "model"
    export_model(str(checkpoint_path("minilm")), target, variants=("fp32", "opt", "int8"), log=lambda m: None)
    return target


@pytest.fixture(scope="session")
def torch_model() -> Callable[[str], Any]:
    """``torch_model(key)``: the checkpoint's transformers BertModel (eval, fp32, eager), loaded once."""
    from bert_onnx.export.graph import load_model

    models: dict[str, Any] = {}

    def get(key: str) -> Any:
        if key not in models:
            models[key], _ = load_model(checkpoint_path(key))
        return models[key]

    return get


@pytest.fixture(scope="session")
def encoder(export_dir: Callable[[str], Path]) -> Callable[[str], Any]:
    from bert_onnx.runtime import Encoder

    encoders: dict[str, Any] = {}

    def get(key: str) -> Any:
        if key not in encoders:
            encoders[key] = Encoder(export_dir(key), variant="fp32")
        return encoders[key]

    return get


def torch_reference(model: Any, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Any:
    """PyTorch's ``BaseModelOutputWithPooling`` with all hidden states, computed now, in the test."""
    import torch

    def tensor(value: Any) -> Any:
        return None if value is None else torch.as_tensor(np.asarray(value), dtype=torch.long)

    with torch.no_grad():
        return model(
            input_ids=tensor(input_ids),
            attention_mask=tensor(attention_mask),
            token_type_ids=tensor(token_type_ids),
            output_hidden_states=True,
            return_dict=True,
        )


def max_diffs(reference: Any, output: Any, mask: np.ndarray) -> dict[str, float]:
    """Max abs diff per output name over non-padded positions (padded positions are undefined in BERT)."""
    keep = np.asarray(mask).astype(bool)
    pairs = {
        interface.LAST_HIDDEN_STATE: (reference.last_hidden_state, output.last_hidden_state),
        interface.POOLER_OUTPUT: (reference.pooler_output, output.pooler_output),
    }
    assert output.hidden_states is not None
    assert len(output.hidden_states) == len(reference.hidden_states)
    for i, (ref, out) in enumerate(zip(reference.hidden_states, output.hidden_states, strict=True)):
        pairs[interface.hidden_state_name(i)] = (ref, out)
    diffs = {}
    for name, (ref, out) in pairs.items():
        ref = ref.numpy()
        assert out.shape == ref.shape, f"{name}: {out.shape} != {ref.shape}"
        assert out.dtype == np.float32, name
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        diffs[name] = float((diff if name == interface.POOLER_OUTPUT else diff[keep]).max())
    return diffs
