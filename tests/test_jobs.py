"""bert_onnx.jobs: one resumable store (index, checksums, one error type, one damaged-part policy) and the
Python-callable ``embed_file``; the CLI's `bert-onnx embed` and Ray's Parquet parts both run on it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from bert_onnx.errors import InvalidValueError
from bert_onnx.jobs import LineTooLongError, PartStore, ResumeError, embed_file, parts_dir
from bert_onnx.runtime import EmbedRecipe, Encoder
from bert_onnx.runtime.recipe import Batching
from bert_onnx.runtime.tokenizer import TextTooLongError

pytestmark = pytest.mark.fast  # the edit-loop tier: tiny checkpoint, in process


def _bytes(payload: bytes) -> Callable[[IO[bytes]], None]:
    def write(handle: IO[bytes]) -> None:
        handle.write(payload)

    return write


def interrupt_after(texts: int) -> Callable[[int], None]:
    """A ``progress`` callback that interrupts the run (as Ctrl-C does) once ``texts`` texts are done."""
    seen = 0

    def progress(count: int) -> None:
        nonlocal seen
        seen += count
        if seen >= texts:
            raise KeyboardInterrupt

    return progress


def test_a_store_keeps_finished_parts_and_refuses_what_does_not_match(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    store = PartStore.open(folder, {"input": "a", "pooling": "cls"}, ".bin", resume=False)
    store.add(0, 3, _bytes(b"zero"))
    store.add(1, 2, _bytes(b"one"))
    assert store.first_missing() == 2 and store.rows == 5 and PartStore.finished(folder) == 2

    again = PartStore.open(folder, {"input": "a", "pooling": "cls"}, ".bin", resume=True)
    assert again.done == store.done
    with pytest.raises(ResumeError, match=r"holds an unfinished run .* pass --resume .* delete that folder"):
        PartStore.open(folder, {"input": "a", "pooling": "cls"}, ".bin", resume=False)
    with pytest.raises(ResumeError, match=r"started with other settings \(pooling: was 'cls', now 'mean'\)"):
        PartStore.open(folder, {"input": "a", "pooling": "mean"}, ".bin", resume=True)
    with pytest.raises(ResumeError, match=r"its parts are \.bin files, this job writes \.parquet"):
        PartStore.open(folder, {"input": "a", "pooling": "cls"}, ".parquet", resume=True)
    (folder / "index.json").write_text("{not json")
    with pytest.raises(ResumeError, match="cannot resume from it"):
        PartStore.open(folder, {"input": "a", "pooling": "cls"}, ".bin", resume=True)


def test_a_finished_store_and_a_stream_say_what_to_do(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    store = PartStore.open(folder, {"input": "a"}, ".bin", resume=False)
    store.add(0, 3, _bytes(b"zero"))
    with pytest.raises(ResumeError, match=r"holds an unfinished run .* a stream cannot resume; delete that folder"):
        PartStore.open(folder, {"input": "-"}, ".bin", resume=False, resumable=False)
    store.finish()
    with pytest.raises(ResumeError, match=r"job holds a finished run \(1 part\(s\)\); to embed again, delete"):
        PartStore.open(folder, {"input": "a"}, ".bin", resume=False)
    # Resuming a finished run has nothing left to do.
    assert PartStore.open(folder, {"input": "a"}, ".bin", resume=True).first_missing() == 1


def test_a_damaged_part_is_logged_and_done_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "job"
    store = PartStore.open(folder, {}, ".bin", resume=False)
    for number in range(3):
        store.add(number, 1, _bytes(bytes([number]) * 10))
    store.part_path(1).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="bert_onnx.jobs"):
        again = PartStore.open(folder, {}, ".bin", resume=True)
    assert sorted(again.done) == [0, 2] and again.first_missing() == 1
    assert "part-000001.bin is missing or damaged; embedding that part again" in caplog.text


def test_an_empty_folder_is_used_and_temporaries_are_cleared(tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    store = PartStore.open(tmp_path / "job", {}, ".bin", resume=False)
    store.add(0, 1, _bytes(b"a"))
    (tmp_path / "job" / ".part-000001.bin.123.tmp").write_bytes(b"half")
    PartStore.open(tmp_path / "job", {}, ".bin", resume=True)
    assert not list((tmp_path / "job").glob(".*.tmp"))


@pytest.fixture()
def lines(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i} of the corpus, with a few words\n" for i in range(23)), encoding="utf-8")
    return path


def test_embed_file_from_python_matches_encoder_embed(
    export_dir: Callable[[str], Path], encoder: Callable[[str], Any], lines: Path, tmp_path: Path
) -> None:
    recipe = EmbedRecipe(pooling="mean", normalize=True)
    shape = embed_file(export_dir("tiny"), lines, tmp_path / "out.npy", recipe, chunk_size=5)
    texts = lines.read_text(encoding="utf-8").splitlines()
    assert shape == (23, 32)
    np.testing.assert_allclose(
        np.load(tmp_path / "out.npy"), encoder("tiny").embed_recipe(texts, recipe), rtol=0, atol=1e-6
    )
    assert not parts_dir(tmp_path / "out.npy").exists()


def test_embed_file_interrupted_then_resumed_gives_identical_bytes(
    export_dir: Callable[[str], Path], lines: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = export_dir("tiny")
    capsys.readouterr()  # the first export of the session (transformers' loading bar) is not library reporting
    reference = tmp_path / "reference.npy"
    embed_file(folder, lines, reference, chunk_size=5)
    out = tmp_path / "out.npy"
    interrupt_after_two_parts = interrupt_after(10)

    with pytest.raises(KeyboardInterrupt):
        embed_file(export_dir("tiny"), lines, out, chunk_size=5, progress=interrupt_after_two_parts)
    assert not out.exists()
    index = json.loads((parts_dir(out) / "index.json").read_text())
    assert sorted(index["parts"]) == ["0"], "the part being embedded when interrupted must not be recorded"
    with pytest.raises(ResumeError, match="pass --resume"):
        embed_file(export_dir("tiny"), lines, out, chunk_size=5)
    assert embed_file(export_dir("tiny"), lines, out, chunk_size=5, resume=True) == (23, 32)
    assert out.read_bytes() == reference.read_bytes()
    assert capsys.readouterr() == ("", ""), "library code reports through logging, never print"


def test_embed_file_names_the_line_that_is_too_long(export_dir: Callable[[str], Path], tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("short\n" * 7 + "word " * 40 + "\n", encoding="utf-8")
    recipe = EmbedRecipe(max_length=16, truncation=False)
    # 42 tokens, or "at least N" where the tokenizer stopped counting once past the limit
    with pytest.raises(ValueError, match=r"in\.txt: line 8 is (42|at least \d+) tokens long, over max_length 16"):
        embed_file(export_dir("tiny"), source, tmp_path / "out.npy", recipe, chunk_size=3)
    assert PartStore.finished(parts_dir(tmp_path / "out.npy")) == 2, "the two finished parts are kept"


def test_a_stream_keeps_no_parts_when_interrupted(
    export_dir: Callable[[str], Path], lines: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    interrupt_after_two_parts = interrupt_after(10)

    out = tmp_path / "out.npy"
    with open(lines, "rb") as stream, pytest.raises(KeyboardInterrupt), caplog.at_level(logging.INFO, "bert_onnx"):
        embed_file(export_dir("tiny"), stream, out, chunk_size=5, progress=interrupt_after_two_parts)
    assert "1 finished part(s) removed: a job reading <stdin> cannot resume" in caplog.text
    assert not parts_dir(out).exists() and not out.exists()
    with open(lines, "rb") as stream:  # nothing blocks the next run
        assert embed_file(export_dir("tiny"), stream, out, chunk_size=5) == (23, 32)


@pytest.mark.parametrize("where", ["output", "parts"])
def test_a_job_never_writes_over_or_deletes_its_input(
    export_dir: Callable[[str], Path], lines: Path, tmp_path: Path, where: str
) -> None:
    before = lines.read_bytes()
    if where == "output":
        out, message = lines, "is the input file"
    else:
        out = tmp_path / "out.npy"
        parts_dir(out).mkdir()
        source = parts_dir(out) / "corpus.txt"
        source.write_bytes(before)
        lines, message = source, "is inside .*out.npy.parts, the folder this job writes its parts into"
    with pytest.raises(InvalidValueError, match=message):
        embed_file(export_dir("tiny"), lines, out, chunk_size=5, resume=True)
    assert lines.read_bytes() == before


def test_a_line_too_long_says_at_least_when_the_count_stopped_early(
    export_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    exact = LineTooLongError("in.txt", 3, 42, 16)
    assert str(exact).startswith("in.txt: line 3 is 42 tokens long, over max_length 16;")
    assert str(LineTooLongError("in.txt", 3, 600, 16, at_least=True)).startswith("in.txt: line 3 is at least 600 ")
    source = tmp_path / "in.txt"
    source.write_text("short\n" + "word " * 20_000 + "\n", encoding="utf-8")
    with pytest.raises(LineTooLongError) as caught:
        embed_file(export_dir("tiny"), source, tmp_path / "out.npy", EmbedRecipe(max_length=16, truncation=False))
    cause = caught.value.__cause__
    assert isinstance(cause, TextTooLongError) and cause.at_least, "the runtime stopped counting this line early"
    assert (caught.value.line, caught.value.length, caught.value.at_least) == (2, cause.length, True)
    assert f"line 2 is at least {cause.length} tokens long" in str(caught.value)


def test_a_job_resumes_with_other_batching_but_not_another_recipe(
    export_dir: Callable[[str], Path], lines: Path, tmp_path: Path
) -> None:
    """The fingerprint holds what changes the vectors (the recipe, the model's files), not how texts are batched."""
    folder = export_dir("tiny")
    reference = tmp_path / "reference.npy"
    embed_file(folder, lines, reference, chunk_size=5, batching=Batching(batch_size=32))
    out = tmp_path / "out.npy"

    def interrupt_after_two_parts(count: int, seen: list[int] = []) -> None:  # noqa: B006  # one call's counter
        seen.append(count)
        if sum(seen) >= 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_file(folder, lines, out, chunk_size=5, batching=Batching(1), progress=interrupt_after_two_parts)
    settings = json.loads((parts_dir(out) / "index.json").read_text())["settings"]
    assert settings["pooling"] == "cls" and settings["tokenizer_sha256"] and "batch_size" not in settings
    with pytest.raises(ResumeError, match=r"other settings \(normalize: was False, now True\)"):
        embed_file(folder, lines, out, EmbedRecipe(normalize=True), chunk_size=5, resume=True)
    assert embed_file(folder, lines, out, chunk_size=5, batching=Batching(3, max_tokens=600), resume=True) == (23, 32)
    assert out.read_bytes() == reference.read_bytes()


def test_a_job_embeds_by_the_folder_recipe_unless_given_one(
    export_dir: Callable[[str], Path], lines: Path, tmp_path: Path
) -> None:
    folder = export_dir("tiny-st-max")  # a sentence-transformers layout: max pooling, 24 tokens
    texts = lines.read_text(encoding="utf-8").splitlines()
    encoder = Encoder(folder)
    embed_file(encoder, lines, tmp_path / "own.npy", chunk_size=7)
    np.testing.assert_array_equal(np.load(tmp_path / "own.npy"), encoder.embed(texts))
    embed_file(encoder, lines, tmp_path / "cls.npy", EmbedRecipe(), chunk_size=7)
    np.testing.assert_array_equal(np.load(tmp_path / "cls.npy"), encoder.embed_recipe(texts, EmbedRecipe()))
    assert not np.array_equal(np.load(tmp_path / "own.npy"), np.load(tmp_path / "cls.npy"))


def test_embed_file_names_the_line_left_with_no_token_to_pool(
    export_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """A line whose tokens all merge into a prompt left out of pooling is named by its line of the input file."""
    source = tmp_path / "in.txt"
    source.write_text("short\n" * 4 + "hen\n", encoding="utf-8")
    recipe = EmbedRecipe(pooling="max", prompt="aac", include_prompt=False)
    with pytest.raises(InvalidValueError, match=r"in\.txt: line 5 leaves no token to pool"):
        embed_file(export_dir("tiny"), source, tmp_path / "out.npy", recipe, chunk_size=3)
