"""The optimized-graph cache and IO binding: same numbers as a plain session, crash-safe and self-checking."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import max_diffs, torch_reference

from bert_onnx import choices, interface
from bert_onnx.runtime import Encoder

TEXTS = ["I love Korea", "a longer sentence, with punctuation and more than a few tokens in it", ""]


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".onnx")


def _model_path(enc: Encoder) -> Path:
    return Path(enc.runner.session._model_path)


def _same_outputs(a: Encoder, b: Encoder) -> None:
    out_a, out_b = a.encode(TEXTS), b.encode(TEXTS)
    mask = out_a.attention_mask.astype(bool)
    for x, y in zip(out_a.hidden_states or (), out_b.hidden_states or (), strict=True):
        np.testing.assert_allclose(x[mask], y[mask], atol=1e-6)
    np.testing.assert_allclose(out_a.pooler_output, out_b.pooler_output, atol=1e-6)


@pytest.mark.fast
def test_second_load_starts_from_the_cached_graph(export_dir: Callable[[str], Path], tmp_path: Path) -> None:
    folder = export_dir("tiny")
    first = Encoder(folder, variant="fp32", session_cache=tmp_path)
    (graph,) = _entries(tmp_path)
    assert graph.with_suffix(".sha256").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "staging file left behind"
    second = Encoder(folder, variant="fp32", session_cache=tmp_path)
    assert _model_path(second) == graph
    assert _model_path(first) == folder / choices.get("fp32").file
    _same_outputs(first, Encoder(folder, variant="fp32", session_cache=False))
    _same_outputs(second, Encoder(folder, variant="fp32", session_cache=False))


def test_cached_graph_keeps_parity_with_pytorch(
    export_dir: Callable[[str], Path], torch_model: Callable[[str], Any], tmp_path: Path
) -> None:
    folder = export_dir("minilm")
    Encoder(folder, variant="fp32", session_cache=tmp_path)
    enc = Encoder(folder, variant="fp32", session_cache=tmp_path)
    assert _model_path(enc).parent == tmp_path
    out = enc.encode(TEXTS)
    reference = torch_reference(torch_model("minilm"), out.input_ids, out.attention_mask, out.token_type_ids)
    worst = max(max_diffs(reference, out, out.attention_mask).values())
    assert worst <= interface.FP32_TOLERANCE


@pytest.mark.fast
@pytest.mark.parametrize("damage", ["truncate", "tamper", "drop-digest"])
def test_damaged_cache_entry_is_rebuilt_not_used(
    export_dir: Callable[[str], Path], tmp_path: Path, damage: str
) -> None:
    folder = export_dir("tiny")
    Encoder(folder, variant="fp32", session_cache=tmp_path)
    (graph,) = _entries(tmp_path)
    good = graph.read_bytes()
    if damage == "truncate":
        graph.write_bytes(good[: len(good) // 2])
    elif damage == "tamper":
        graph.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    else:
        graph.with_suffix(".sha256").unlink()
    enc = Encoder(folder, variant="fp32", session_cache=tmp_path)
    assert _model_path(enc) == folder / choices.get("fp32").file, "a damaged entry was loaded"
    assert graph.read_bytes() == good, "the entry was not rebuilt"
    _same_outputs(enc, Encoder(folder, variant="fp32", session_cache=False))


@pytest.mark.fast
def test_cache_entries_are_fsynced_before_they_are_renamed_into_place(
    export_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph and its digest that end up in the cache are the very files that were fsynced (same inode), so a
    crash cannot leave a renamed graph whose bytes never reached the disk."""
    synced: set[tuple[int, int]] = set()
    fsync = os.fsync

    def recording(fd: int) -> None:
        info = os.fstat(fd)
        synced.add((info.st_dev, info.st_ino))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    Encoder(export_dir("tiny"), variant="fp32", session_cache=tmp_path)
    (graph,) = _entries(tmp_path)
    for entry in (graph, graph.with_suffix(".sha256")):
        info = entry.stat()
        assert (info.st_dev, info.st_ino) in synced, f"{entry.name} was renamed into place without an fsync"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "staging files left behind"


@pytest.mark.fast
def test_no_cache_without_verification_or_when_disabled(export_dir: Callable[[str], Path], tmp_path: Path) -> None:
    folder = export_dir("tiny")
    Encoder(folder, variant="fp32", session_cache=tmp_path, verify=False)
    Encoder(folder, variant="fp32", session_cache=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.fast
def test_unwritable_cache_warns_and_still_loads(export_dir: Callable[[str], Path], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot write the session cache"):
        enc = Encoder(export_dir("tiny"), variant="fp32", session_cache=blocker / "sessions")
    _same_outputs(enc, Encoder(export_dir("tiny"), variant="fp32", session_cache=False))


def test_cache_entries_are_per_variant(variants_dir: Path, tmp_path: Path) -> None:
    for variant in ("fp32", "opt", "int8"):
        Encoder(variants_dir, variant=variant, session_cache=tmp_path)
    assert len(_entries(tmp_path)) == 3
    for variant in ("fp32", "opt", "int8"):
        assert _model_path(Encoder(variants_dir, variant=variant, session_cache=tmp_path)).parent == tmp_path


@pytest.mark.fast
def test_io_binding_gives_the_same_arrays(encoder: Callable[[str], Any], export_dir: Callable[[str], Path]) -> None:
    plain = encoder("tiny")
    bound = Encoder(export_dir("tiny"), variant="fp32", io_binding=True)
    assert bound.io_binding and not plain.io_binding
    ids = np.array([[101, 7, 8, 9, 102, 0], [101, 10, 102, 0, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    a, b = plain.run(ids, mask), bound.run(ids, mask)
    for name in ("last_hidden_state", "pooler_output"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for x, y in zip(a.hidden_states or (), b.hidden_states or (), strict=True):
        np.testing.assert_array_equal(x, y)
    assert bound.run(ids, mask, output_hidden_states=False).hidden_states is None
    for pooling in ("cls", "mean", "pooler"):
        np.testing.assert_array_equal(plain.embed(TEXTS, pooling=pooling), bound.embed(TEXTS, pooling=pooling))
    np.testing.assert_array_equal(plain.embed(TEXTS, layers=[0, -1]), bound.embed(TEXTS, layers=[0, -1]))


@pytest.mark.fast
@pytest.mark.parametrize("kwargs", [{"session_cache": 3}, {"io_binding": "yes"}])
def test_bad_options_are_type_errors(export_dir: Callable[[str], Path], kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        Encoder(export_dir("tiny"), **kwargs)
