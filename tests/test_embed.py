"""``Encoder.embed``: every pooling and layer recipe against a NumPy reference built from PyTorch hidden states."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from helpers import checkpoint_path, torch_reference

from bert_onnx import interface

TEXTS = [
    "I love Korea",
    "A much longer sentence, so that length-sorted batches differ from input order in their padding.",
    "",
    "Short one.",
    "Ünïcödé àccents and 中文 with emoji 🙂",
    "BERT's hidden states from the last four layers make good features.",
    "   ",
    "Seoul",
]
RECIPES = [
    ("cls", None, "concat"),
    ("mean", None, "concat"),
    ("pooler", None, "concat"),
    ("cls", [-4, -3, -2, -1], "concat"),
    ("mean", [-4, -3, -2, -1], "concat"),
    ("cls", [-4, -3, -2, -1], "mean"),
    ("mean", [-4, -3, -2, -1], "mean"),
    ("mean", [0], "concat"),
    ("cls", [6, 0, 3], "concat"),
    ("mean", 2, "mean"),
]


def numpy_reference(
    model: Any, tokenizer: Any, texts: list[str], pooling: str, layers: Any, combine: str, normalize: bool
) -> np.ndarray:
    """The recipe written out in NumPy over PyTorch's outputs on transformers' own tokenization."""
    batch = tokenizer(texts, padding="longest", truncation=True, max_length=512, return_tensors="np")
    out = torch_reference(model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    mask = batch["attention_mask"].astype(np.float64)[:, :, None]

    def pool(states: np.ndarray) -> np.ndarray:
        if pooling == "cls":
            return states[:, 0]
        return (states * mask).sum(axis=1) / mask.sum(axis=1)

    if pooling == "pooler":
        vectors = out.pooler_output.numpy().astype(np.float64)
    elif layers is None:
        vectors = pool(out.last_hidden_state.numpy().astype(np.float64))
    else:
        selected = [layers] if isinstance(layers, int) else layers
        pooled = [pool(out.hidden_states[i].numpy().astype(np.float64)) for i in selected]
        vectors = np.concatenate(pooled, axis=1) if combine == "concat" else np.mean(pooled, axis=0)
    if normalize:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


@pytest.fixture(scope="module")
def reference_tokenizer() -> Any:
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(checkpoint_path("minilm"))


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize(("pooling", "layers", "combine"), RECIPES)
def test_embed_matches_numpy_reference(
    pooling: str,
    layers: Any,
    combine: str,
    normalize: bool,
    encoder: Callable[[str], Any],
    torch_model: Callable[[str], Any],
    reference_tokenizer: Any,
) -> None:
    enc = encoder("minilm")
    # batch_size=3 forces several length-sorted batches, so input order must be restored.
    vectors = enc.embed(TEXTS, pooling=pooling, layers=layers, combine=combine, normalize=normalize, batch_size=3)
    expected = numpy_reference(torch_model("minilm"), reference_tokenizer, TEXTS, pooling, layers, combine, normalize)
    assert vectors.dtype == np.float32
    assert vectors.shape == expected.shape
    np.testing.assert_allclose(vectors, expected, atol=1e-4, rtol=0)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_embed_dims(encoder: Callable[[str], Any]) -> None:
    enc = encoder("minilm")
    assert enc.embed(TEXTS[:2]).shape == (2, 384)
    assert enc.embed(TEXTS[:2], layers=[-4, -3, -2, -1]).shape == (2, 4 * 384)
    assert enc.embed(TEXTS[:2], layers=[-4, -3, -2, -1], combine="mean").shape == (2, 384)
    assert enc.embed("I love Korea").shape == (1, 384)


def test_embed_keeps_input_order(encoder: Callable[[str], Any]) -> None:
    enc = encoder("minilm")
    together = enc.embed(TEXTS, pooling="mean", batch_size=2)
    one_by_one = np.concatenate([enc.embed([text], pooling="mean") for text in TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5, rtol=0)
    reversed_order = enc.embed(TEXTS[::-1], pooling="mean", batch_size=2)
    np.testing.assert_allclose(reversed_order[::-1], together, atol=1e-5, rtol=0)


def test_embed_reports_progress(encoder: Callable[[str], Any]) -> None:
    done: list[int] = []
    encoder("minilm").embed(TEXTS, batch_size=3, progress=done.append)
    assert done == [3, 3, 2]


class _RecordingRunner:
    """Wraps the encoder's runner and records which outputs each run asked for."""

    def __init__(self, runner: Any) -> None:
        self._runner = runner
        self.requested: list[list[str]] = []

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> Any:
        self.requested.append(list(names))
        return self._runner.run(names, feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


@pytest.mark.parametrize(
    ("kwargs", "fetched"),
    [
        ({"pooling": "cls"}, [interface.LAST_HIDDEN_STATE]),
        ({"pooling": "mean"}, [interface.LAST_HIDDEN_STATE]),
        ({"pooling": "pooler"}, [interface.POOLER_OUTPUT]),
        ({"pooling": "mean", "layers": [-2, -1]}, ["hidden_states.5", "hidden_states.6"]),
        ({"pooling": "cls", "layers": [0, 0]}, ["hidden_states.0"]),
    ],
)
def test_embed_fetches_only_needed_outputs(
    kwargs: dict[str, Any], fetched: list[str], encoder: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = encoder("minilm")
    recorder = _RecordingRunner(enc.runner)
    monkeypatch.setattr(enc, "runner", recorder)
    enc.embed(TEXTS[:4], batch_size=2, **kwargs)
    assert recorder.requested == [fetched, fetched]


def test_empty_input_gives_empty_results(encoder: Callable[[str], Any]) -> None:
    enc = encoder("minilm")
    assert enc.embed([]).shape == (0, 384)
    assert enc.embed([], layers=[-4, -3, -2, -1]).shape == (0, 4 * 384)
    out = enc.encode([])
    assert out.input_ids.shape == (0, 0)
    assert out.last_hidden_state.shape == (0, 0, 384)
    assert out.pooler_output.shape == (0, 384)
    assert out.hidden_states is not None and len(out.hidden_states) == 7
    padded = enc.encode([], padding="max_length", max_length=16)
    assert padded.last_hidden_state.shape == (0, 16, 384)
    ran = enc.run(np.zeros((0, 5), dtype=np.int64))
    assert ran.last_hidden_state.shape == (0, 5, 384)


def test_token_budget_bounds_each_batch(encoder: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Long texts go in small batches, short ones in full batches: rows x longest <= max_tokens."""
    enc = encoder("minilm")
    shapes: list[tuple[int, int]] = []
    runner = enc.runner

    class Recorder:
        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> Any:
            shapes.append(feeds["input_ids"].shape)
            return runner.run(names, feeds)

    monkeypatch.setattr(enc, "runner", Recorder())
    texts = ["word " * 600] * 5 + ["short text"] * 40
    vectors = enc.embed(texts, batch_size=32, max_tokens=1024)
    assert shapes == [(2, 512), (2, 512), (2, 512), (32, 4), (7, 4)]  # the 5th long text shares with a short one
    monkeypatch.undo()
    np.testing.assert_allclose(vectors, enc.embed(texts), atol=1e-5, rtol=0)


@pytest.mark.parametrize("max_tokens", [0, 100, 2.5])
def test_bad_token_budget(encoder: Callable[[str], Any], max_tokens: Any) -> None:
    with pytest.raises(ValueError, match=r"max_tokens=.* must be an int >= max_length"):
        encoder("minilm").embed(["x"], max_tokens=max_tokens)
