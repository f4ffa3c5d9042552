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

import pytest
from helpers import checkpoint_path


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep ONNX Runtime's optimized-graph cache and tuned profiles of this test session out of the user's
    ~/.cache (CLI subprocesses inherit the variables)."""
    from bert_onnx.runtime.profile import PROFILE_ENV
    from bert_onnx.runtime.session import CACHE_ENV

    folder = tmp_path_factory.mktemp("session-cache")
    os.environ[CACHE_ENV] = str(folder)
    os.environ[PROFILE_ENV] = str(tmp_path_factory.mktemp("profiles"))
    return folder


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """``export_dir(key)``: the checkpoint's model folder, exported once per test session."""
    from bert_onnx.export import export_model

    folders: dict[str, Path] = {}
    fast_tier = request.config.getoption("markexpr") == "fast"

    def get(key: str) -> Path:
        if fast_tier and not key.startswith("tiny"):
            raise RuntimeError(f"a test marked fast exports {key!r}: the fast tier uses only the tiny checkpoint")
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
def all_variants_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real pretrained weights (b) exported with ``--variants all`` (every choice this machine can gate; those that
    miss their gate are left out, saying why), once per session."""
    from bert_onnx.export import export_model

    target = tmp_path_factory.mktemp("all-variants") / "model"
    export_model(str(checkpoint_path("minilm")), target, variants="all", log=lambda m: None)
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
