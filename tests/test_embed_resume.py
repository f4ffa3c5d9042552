"""``bert-onnx embed`` over large input: chunked output, crash safety and ``--resume``, with real subprocesses.

A run is killed (SIGKILL and SIGINT) while it is writing; what it leaves must be complete chunks and an index that
lists only those, never a partial ``OUT.npy``; ``--resume`` must then finish with the very bytes an uninterrupted
run writes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import assert_error, cli_env, embed_args, run_cli, wait_for, write_lines

from bert_onnx.jobs import parts_dir
from bert_onnx.manifest import sha256_file

LINES = 12_000
CHUNK = "300"


@pytest.fixture(scope="module")
def tiny_dir(export_dir: Callable[[str], Path]) -> Path:
    return export_dir("tiny")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real text of varied length: Python's reference documentation, cycled to LINES lines."""
    from bert_onnx.export.corpus import documentation_paragraphs

    texts = [" ".join(p.split())[: 40 + 13 * i % 400] for i, p in enumerate(documentation_paragraphs())]
    lines = [texts[i % len(texts)] for i in range(LINES)]
    lines[7] = ""  # an empty line is a text too
    return write_lines(tmp_path_factory.mktemp("corpus") / "corpus.txt", lines)


@pytest.fixture(scope="module")
def reference(tiny_dir: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run's output."""
    out = tmp_path_factory.mktemp("reference") / "out.npy"
    run = run_cli(*embed_args(tiny_dir, corpus, out, "--chunk-size", CHUNK, "--quiet"), timeout=600)
    assert run.returncode == 0, run.describe()
    assert not parts_dir(out).exists(), "the parts folder was not removed after a complete run"
    return out


def _start(tiny_dir: Path, corpus: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bert_onnx", *map(str, embed_args(tiny_dir, corpus, out, *extra))]
    return subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env()
    )


def _wait_for_parts(process: subprocess.Popen[bytes], out: Path, count: int, timeout: float = 120) -> None:
    index = parts_dir(out) / "index.json"

    def finished() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before it could be interrupted")
        try:
            return len(json.loads(index.read_text())["parts"]) >= count
        except (OSError, ValueError):
            return False

    try:
        wait_for(finished, timeout, f"{count} finished parts")
    except BaseException:
        process.kill()
        raise


def _assert_only_complete_chunks(out: Path) -> int:
    """The index lists only chunks that are on disk, whole and unchanged; returns how many."""
    folder = parts_dir(out)
    body = json.loads((folder / "index.json").read_text())
    for number, record in body["parts"].items():
        path = folder / record["file"]
        assert sha256_file(path) == record["sha256"], f"chunk {number} differs from its index entry"
        assert np.load(path).shape == (record["rows"], 32)
    return len(body["parts"])


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_interrupted_run_resumes_to_identical_bytes(
    tiny_dir: Path, corpus: Path, reference: Path, tmp_path: Path, how: str
) -> None:
    out = tmp_path / "out.npy"
    process = _start(tiny_dir, corpus, out, "--chunk-size", CHUNK, "--quiet")
    _wait_for_parts(process, out, 3)
    process.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    if how == "SIGINT":
        assert process.returncode == 130, stderr.decode()
        assert b"finished part(s) are kept in" in stderr and b"--resume" in stderr, stderr.decode()
        assert b"Traceback" not in stderr, stderr.decode()
    else:
        assert process.returncode == -signal.SIGKILL
    assert not out.exists(), "an interrupted run left an output file"
    done = _assert_only_complete_chunks(out)
    assert 3 <= done < LINES // int(CHUNK), f"{done} chunks: the run was not interrupted mid-way"

    run = run_cli(*embed_args(tiny_dir, corpus, out, "--chunk-size", CHUNK, "--resume"), timeout=600)
    assert run.returncode == 0, run.describe()
    # The progress bar starts from the chunks already done, and reaches every line.
    assert f"{LINES}/{LINES}" in run.stderr, run.describe()
    assert out.read_bytes() == reference.read_bytes()
    assert not parts_dir(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"], "temporary files left behind"


def test_chunked_output_matches_the_library(tiny_dir: Path, corpus: Path, reference: Path, encoder: Any) -> None:
    saved = np.load(reference)
    texts = corpus.read_text(encoding="utf-8").split("\n")[:-1]
    assert saved.shape == (LINES, 32)
    expected = encoder("tiny").embed(texts)
    np.testing.assert_allclose(saved, expected, rtol=0, atol=1e-5)


def test_a_damaged_chunk_is_embedded_again(tiny_dir: Path, corpus: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.npy"
    process = _start(tiny_dir, corpus, out, "--chunk-size", CHUNK, "--quiet")
    _wait_for_parts(process, out, 2)
    process.kill()
    process.wait()
    part = parts_dir(out) / "part-000001.npy"
    part.write_bytes(part.read_bytes()[:100])
    run = run_cli(*embed_args(tiny_dir, corpus, out, "--chunk-size", CHUNK, "--resume", "--quiet"), timeout=600)
    assert run.returncode == 0, run.describe()
    assert "part-000001.npy is missing or damaged; embedding that part again" in run.stderr
    assert out.read_bytes() == reference.read_bytes()


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        pytest.param((), ("holds an unfinished run", "pass --resume", "delete that folder"), id="no-resume"),
        pytest.param(
            ("--resume", "--pooling", "mean"),
            ("started with other settings", "pooling: was 'cls', now 'mean'"),
            id="other-pooling",
        ),
        pytest.param(("--resume", "--chunk-size", "7"), ("chunk_size: was 300, now 7",), id="other-chunk-size"),
    ],
)
def test_unfinished_run_is_never_silently_overwritten_or_mixed(
    tiny_dir: Path, corpus: Path, tmp_path: Path, extra: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    out = tmp_path / "out.npy"
    process = _start(tiny_dir, corpus, out, "--chunk-size", CHUNK, "--quiet")
    _wait_for_parts(process, out, 1)
    process.kill()
    process.wait()
    before = {p.name: sha256_file(p) for p in parts_dir(out).iterdir() if not p.name.startswith(".")}
    chunk = [] if "--chunk-size" in extra else ["--chunk-size", CHUNK]
    args = [*embed_args(tiny_dir, corpus, out, "--quiet"), *chunk]
    assert_error(run_cli(*args, *extra), needles)
    after = {p.name: sha256_file(p) for p in parts_dir(out).iterdir() if not p.name.startswith(".")}
    assert after == before, "a refused run changed the unfinished one"


def test_changed_input_is_not_resumed(tiny_dir: Path, corpus: Path, tmp_path: Path) -> None:
    source = tmp_path / "corpus.txt"
    source.write_bytes(corpus.read_bytes())
    out = tmp_path / "out.npy"
    process = _start(tiny_dir, source, out, "--chunk-size", CHUNK, "--quiet")
    _wait_for_parts(process, out, 1)
    process.kill()
    process.wait()
    with open(source, "ab") as handle:
        handle.write(b"one more line\n")
    run = run_cli(*embed_args(tiny_dir, source, out, "--chunk-size", CHUNK, "--resume"))
    assert_error(run, ("started with other settings", "input_sha256"))


def test_resume_from_stdin_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    run = run_cli(*embed_args(tiny_dir, "-", tmp_path / "out.npy", "--resume"), stdin=b"text\n")
    assert_error(run, ("--resume needs --input FILE",))


def test_an_interrupted_run_from_stdin_keeps_nothing_and_blocks_no_rerun(
    tiny_dir: Path, tmp_path: Path, encoder: Any
) -> None:
    """Stdin cannot be read twice, so its finished chunks cannot be resumed: Ctrl-C removes them, says so, and does
    not suggest --resume; the next run from stdin to the same output just works."""
    out = tmp_path / "out.npy"
    command = [sys.executable, "-m", "bert_onnx", *map(str, embed_args(tiny_dir, "-", out, "--chunk-size", "2", "-q"))]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env()
    )
    assert process.stdin is not None
    process.stdin.write(b"one\ntwo\nthree\nfour\nfive\n")  # stdin stays open: the run waits for more lines
    process.stdin.flush()
    _wait_for_parts(process, out, 2)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=60)[1].decode()
    assert process.returncode == 130, stderr
    assert "2 finished part(s) removed" in stderr and "standard input cannot be read again" in stderr, stderr
    assert "--resume" not in stderr, stderr
    assert not parts_dir(out).exists() and not out.exists()
    run = run_cli(*embed_args(tiny_dir, "-", out), stdin=b"one\ntwo\nthree\n")
    assert run.returncode == 0, run.describe()
    np.testing.assert_allclose(np.load(out), encoder("tiny").embed(["one", "two", "three"]), atol=1e-6)


def test_resume_without_an_unfinished_run_starts_fresh(tiny_dir: Path, tmp_path: Path, encoder: Any) -> None:
    source = write_lines(tmp_path / "few.txt", ["one", "two", "three"])
    out = tmp_path / "out.npy"
    run = run_cli(*embed_args(tiny_dir, source, out, "--resume", "--chunk-size", "2"))
    assert run.returncode == 0, run.describe()
    assert "no unfinished run" in run.stderr
    np.testing.assert_allclose(np.load(out), encoder("tiny").embed(["one", "two", "three"]), atol=1e-6)


def test_bad_chunk_size_is_an_error(tiny_dir: Path, tmp_path: Path) -> None:
    source = write_lines(tmp_path / "few.txt", ["one"])
    assert_error(run_cli(*embed_args(tiny_dir, source, tmp_path / "o.npy", "--chunk-size", "0")), ("--chunk-size 0",))
