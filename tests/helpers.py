"""Helpers the test modules share: checkpoint paths, PyTorch references, and running the CLI as users do.

Fixtures live in ``conftest.py``; plain functions live here, so no test module imports another test module.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bert_onnx
from bert_onnx import interface

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("BERT_ONNX_CACHE", ROOT / ".cache"))
CHECKPOINT_NAMES = {
    "tiny": "tiny-random-bert",
    "minilm": "all-MiniLM-L6-v2",
    "base": "bert-base-uncased-arch-random-weights",
    # one small checkpoint per family besides BERT (scripts/checkpoints_families.py), RANDOM weights
    "roberta": "tiny-random-roberta",
    "xlm-roberta": "tiny-random-xlm-roberta",
    "distilbert": "tiny-random-distilbert",
    "albert": "tiny-random-albert",
    "electra": "tiny-random-electra",
    "mpnet": "tiny-random-mpnet",
    "deberta-v2": "tiny-random-deberta-v2",
    "deberta-v3": "tiny-random-deberta-v3",
    "modernbert": "tiny-random-modernbert",
    "roberta-base": "roberta-base-arch-random-weights",
    "bert-generic-tokenizer": "tiny-random-bert-generic-tokenizer",
    # sentence-transformers layouts (scripts/checkpoints_st.py)
    "st-minilm": "st-all-MiniLM-L6-v2",
    "st-cls-dense": "st-minilm-cls-dense",
    "st-prompts": "st-minilm-prompts",
    "st-truncate-dim": "st-minilm-truncate-dim",
    "tiny-st-max": "st-tiny-max-legacy",
}


def checkpoint_path(key: str) -> Path:
    path = CACHE / "checkpoints" / CHECKPOINT_NAMES[key]
    if not (path / "config.json").is_file():
        raise RuntimeError(f"checkpoint {path} is missing: run `make checkpoints` (or `make test`) first")
    return path


# The subprocess must import the same bert_onnx the tests import, wherever pytest is started from.
PACKAGE_ROOT = Path(bert_onnx.__file__).resolve().parent.parent


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


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"bert-onnx {' '.join(self.args)}\nexit {self.returncode}\n--- stdout ---\n{self.stdout}"
            f"\n--- stderr ---\n{self.stderr}"
        )


def cli_env(overrides: dict[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment plus PYTHONPATH; a ``None`` override removes the variable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(
    *args: str | Path,
    stdin: bytes = b"",
    env: dict[str, str | None] | None = None,
    timeout: float = 120,
) -> Run:
    """``python -m bert_onnx ARGS``; stdin is always given so the CLI never waits on pytest's terminal.

    A run still going after ``timeout`` seconds is killed and fails the test that started it.
    """
    command = [sys.executable, "-m", "bert_onnx", *map(str, args)]
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, env=cli_env(env), timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"bert-onnx {' '.join(command[3:])} still running after {timeout} s\n{_text(exc.stderr)}")
    return Run(tuple(command[3:]), done.returncode, _text(done.stdout), _text(done.stderr))


def _text(data: bytes | str | None) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data or ""


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail the test, naming ``what``, if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.005)


def assert_error(run: Run, needles: Sequence[str], code: int = 1) -> None:
    """A clean failure: the exit code, the error prefix, every needle in stderr, and no traceback."""
    context = run.describe()
    assert run.returncode == code, context
    assert "Traceback" not in run.stderr, context
    if code == 2:
        # argparse names the subcommand in its prefix ("bert-onnx embed: error: ..."), so allow that form.
        assert re.search(r"^bert-onnx( \w+)?: error: ", run.stderr, re.MULTILINE), context
    else:
        assert "bert-onnx: error: " in run.stderr, context
    for needle in needles:
        assert needle in run.stderr, f"{needle!r} missing from stderr\n{context}"


def write_lines(path: Path, texts: Sequence[str]) -> Path:
    path.write_bytes("".join(text + "\n" for text in texts).encode("utf-8"))
    return path


def embed_args(model: Path, source: Path | str, out: Path, *extra: str) -> list[str | Path]:
    return ["embed", model, "--input", source, "--output", out, *extra]
