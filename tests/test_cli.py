"""The ``bert-onnx`` command line, run the way users run it: a subprocess, judged by exit code, stderr and files.

Every bad input must end in one ``bert-onnx: error: ...`` line (exit 1, or 2 for argparse usage errors), never a
traceback, and must leave no output or temporary file behind. Arrays written by ``embed`` are compared with
``Encoder.embed`` computed here, in the test process, on the same texts and options.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from helpers import Run, assert_error, checkpoint_path, cli_env, embed_args, run_cli, write_lines

import bert_onnx
from bert_onnx import interface
from bert_onnx.jobs import parts_dir
from bert_onnx.manifest import Manifest

# The tiny checkpoint (conftest): 2 encoder layers, hidden size 32; the tiny_encoder fixture checks both.
TINY_LAYERS = 2
TINY_HIDDEN = 32

# Written one per line: an empty line in the middle and one at the end (both must stay empty texts), non-ASCII,
# and lines over 8 tokens for the --max-length cases.
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "héllo wörld — 日本語のテキスト",
    "short",
    "a second, different sentence that is much longer than eight word pieces",
    "",
]


def snapshot(path: Path) -> dict[str, str] | None:
    """Relative path -> SHA-256 (or "dir") of everything under ``path``, to prove a failure touched nothing."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
    }


def leftovers(target: Path) -> list[str]:
    """Hidden temporaries (``.NAME.*.partial``/``.old``/``.tmp``) the atomic writers create beside ``target``."""
    if not target.parent.is_dir():
        return []
    return sorted(p.name for p in target.parent.glob(f".{target.name}.*"))


def flip_model_byte(folder: Path) -> None:
    path = folder / interface.MODEL_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def append_model_byte(folder: Path) -> None:
    with open(folder / interface.MODEL_FILE, "ab") as handle:
        handle.write(b"\0")


def remove_tokenizer(folder: Path) -> None:
    (folder / interface.TOKENIZER_FILE).unlink()


def remove_manifest(folder: Path) -> None:
    (folder / interface.MANIFEST_FILE).unlink()


def corrupt_manifest(folder: Path) -> None:
    (folder / interface.MANIFEST_FILE).write_text('{"format": "bert-onnx", ', encoding="utf-8")


def future_manifest(folder: Path) -> None:
    path = folder / interface.MANIFEST_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    data["format_version"] = 99
    path.write_text(json.dumps(data), encoding="utf-8")


def tampered_copy(source: Path, destination: Path, tamper: Callable[[Path], None]) -> Path:
    """A tampered copy: the shared export is used by every test and must never change."""
    shutil.copytree(source, destination)
    tamper(destination)
    return destination


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def tiny_dir(export_dir: Callable[[str], Path]) -> Path:
    return export_dir("tiny")


@pytest.fixture(scope="module")
def tiny_encoder(encoder: Callable[[str], Any]) -> Any:
    tiny = encoder("tiny")
    assert (tiny.num_layers, tiny.hidden_size) == (TINY_LAYERS, TINY_HIDDEN), "the tiny checkpoint changed"
    return tiny


# -- help and usage ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        pytest.param(("--help",), ("export", "embed", "info"), id="top-level"),
        pytest.param(("export", "--help"), ("MODEL", "--output", "--opset", "--force", "--revision"), id="export"),
        pytest.param(
            ("embed", "--help"),
            ("--input", "--pooling", "--layers", "--combine", "--normalize", "--no-truncation", "--quiet"),
            id="embed",
        ),
        pytest.param(("info", "--help"), ("DIR", "--no-verify"), id="info"),
        pytest.param(("--version",), (f"bert-onnx {bert_onnx.__version__}",), id="version"),
    ],
)
def test_help(args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    run = run_cli(*args)
    assert run.returncode == 0, run.describe()
    assert "Traceback" not in run.stderr, run.describe()
    for needle in needles:
        assert needle in run.stdout, f"{needle!r} missing\n{run.describe()}"


def test_console_script_runs_export_help() -> None:
    # The installed entry point, not just `python -m`; it lives beside the interpreter in a virtual environment.
    script = shutil.which("bert-onnx", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip(f"no bert-onnx console script beside {sys.executable} (package not installed)")
    done = subprocess.run(
        [script, "export", "--help"], capture_output=True, text=True, env=cli_env(), timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "--output" in done.stdout and "--force" in done.stdout


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        pytest.param((), ("required", "COMMAND"), id="no-command"),
        pytest.param(("frobnicate",), ("invalid choice",), id="unknown-command"),
        pytest.param(("export", "some-model"), ("--output",), id="export-without-output"),
        pytest.param(("export", "m", "--output", "x", "--opset", "seventeen"), ("--opset",), id="export-opset-text"),
        pytest.param(("embed", "somewhere", "--output", "x.npy"), ("--input",), id="embed-without-input"),
        pytest.param(("info",), ("DIR",), id="info-without-dir"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    assert_error(run_cli(*args), needles, code=2)


# -- export -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportCase:
    """One ``bert-onnx export`` run in its own folder; ``{ckpt}``, ``{out}`` and ``{case}`` fill ``args``."""

    id: str
    args: tuple[str, ...]
    prepare: Callable[[Path, Path], None] | None = None  # (case folder, an earlier export) -> None
    env: dict[str, str | None] = field(default_factory=dict)
    needles: tuple[str, ...] = ()
    timeout: float = 300  # seconds; a run still going then is killed and fails its case


@dataclass(frozen=True)
class ExportOutcome:
    case: ExportCase
    run: Run
    out: Path
    before: dict[str, str] | None


def _copy_earlier_export(case: Path, earlier: Path) -> None:
    shutil.copytree(earlier, case / "model")
    # A file the earlier export listed (as a variant's would be) and this one does not write proves --force swaps the
    # folder instead of writing into it.
    stale = case / "model" / "stale.txt"
    stale.write_text("from the earlier export\n", encoding="utf-8")
    manifest = json.loads((case / "model" / interface.MANIFEST_FILE).read_text(encoding="utf-8"))
    manifest["files"][stale.name] = hashlib.sha256(stale.read_bytes()).hexdigest()
    (case / "model" / interface.MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")


def _web_app(case: Path, earlier: Path) -> None:
    """Someone's folder that happens to hold a manifest.json (a web app's), not ours."""
    (case / "model" / "src").mkdir(parents=True)
    (case / "model" / "manifest.json").write_text('{"name": "my app"}', encoding="utf-8")
    (case / "model" / "src" / "main.js").write_text("precious\n", encoding="utf-8")


def _foreign_folder(case: Path, earlier: Path) -> None:
    (case / "model" / "photos").mkdir(parents=True)
    (case / "model" / "notes.txt").write_text("not a model\n", encoding="utf-8")
    (case / "model" / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")


def _gpt2_checkpoint(case: Path, earlier: Path) -> None:
    (case / "gpt2").mkdir()
    (case / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}', encoding="utf-8")


def _hub_reachable(host: str = "huggingface.co", port: int = 443) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def _offline_env(case_root: Path) -> dict[str, str | None]:
    """An empty hub cache, so a cache that happens to hold bert-base-uncased cannot turn this into an export."""
    return {"HF_HOME": str(case_root / "hf-home"), "HF_HUB_CACHE": str(case_root / "hf-cache")}


HUB_HINT = ("is not in the local Hugging Face cache", "Pass a local checkpoint folder", "bert-onnx export /path/to")

EXPORT_FAILURES = [
    # Hub cases first: their short timeout counts from their start, but they should not queue behind slow exports.
    ExportCase(
        "hub-id-HF_HUB_OFFLINE",
        ("bert-base-uncased", "--output", "{out}"),
        env={"HF_HUB_OFFLINE": "1"},
        needles=(*HUB_HINT, "HF_HUB_OFFLINE"),
        timeout=30,
    ),
    ExportCase(
        # No HF_HUB_OFFLINE: the CLI must notice the hub is unreachable by itself, in seconds, not retry for minutes.
        "hub-id-unreachable",
        ("bert-base-uncased", "--output", "{out}"),
        env={"HF_HUB_OFFLINE": None, "HF_ENDPOINT": None},
        needles=(*HUB_HINT, "cannot be reached"),
        timeout=30,
    ),
    ExportCase(
        "existing-output-without-force",
        ("{ckpt}", "--output", "{out}"),
        prepare=_copy_earlier_export,
        needles=("already exists", "--force"),
    ),
    ExportCase(
        "force-over-foreign-folder",
        ("{ckpt}", "--output", "{out}", "--force"),
        prepare=_foreign_folder,
        needles=("not a bert-onnx model folder", "manifest.json", "refusing"),
    ),
    ExportCase(
        "force-over-foreign-manifest",
        ("{ckpt}", "--output", "{out}", "--force"),
        prepare=_web_app,
        needles=("not a bert-onnx model folder", "not a bert-onnx manifest", "refusing"),
    ),
    ExportCase(
        "unlisted-family",
        ("{case}/gpt2", "--output", "{out}"),
        prepare=_gpt2_checkpoint,
        needles=("model_type 'gpt2' is not a family bert-onnx exports", "supported: bert, roberta"),
    ),
    ExportCase(
        "nonexistent-folder",
        ("{case}/no-such-checkpoint", "--output", "{out}"),
        needles=("no-such-checkpoint", "neither an existing folder nor a valid hub id"),
    ),
    ExportCase(
        # Fails only after the staging folder exists, so this is the case that proves it is cleaned up.
        "opset-9",
        ("{ckpt}", "--output", "{out}", "--opset", "9"),
        needles=("opset=9", "14..20"),
    ),
]
# One successful export only (each costs seconds): --force over an earlier export takes every step of a fresh
# one plus the swap, and a non-default --opset shows the option reaches the graph.
EXPORT_SUCCESSES = [
    ExportCase(
        "force-replaces-earlier-export",
        ("{ckpt}", "--output", "{out}", "--force", "--opset", "14"),
        prepare=_copy_earlier_export,
    ),
]


@pytest.fixture(scope="module")
def export_runs(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> dict[str, ExportOutcome]:
    """Every export case, run once, concurrently (one per CPU).

    Each subprocess spends seconds importing torch; run one after another they alone would blow the time budget.
    """
    checkpoint = checkpoint_path("tiny")
    hub_online = _hub_reachable()
    jobs = []
    for case in EXPORT_FAILURES + EXPORT_SUCCESSES:
        folder = tmp_path_factory.mktemp(f"cli-export-{case.id}")
        if case.prepare is not None:
            case.prepare(folder, tiny_dir)
        env = dict(case.env)
        if case.args[0] == "bert-base-uncased":
            env.update(_offline_env(folder))
            if case.id == "hub-id-unreachable" and hub_online:
                # This machine can reach the hub: point at a closed local port so the case still means offline.
                env["HF_ENDPOINT"] = "http://127.0.0.1:9"
        out = folder / "model"
        args = tuple(a.format(ckpt=checkpoint, out=out, case=folder) for a in case.args)
        jobs.append((case, args, env, out, snapshot(out)))

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        futures = [(job, pool.submit(run_cli, "export", *job[1], env=job[2], timeout=job[0].timeout)) for job in jobs]
        return {
            case.id: ExportOutcome(case, _finished(future, args), out, before)
            for (case, args, _, out, before), future in futures
        }


def _finished(future: Future[Run], args: tuple[str, ...]) -> Run:
    """The run, or for one killed at its timeout a failed run that says so: one slow case fails alone."""
    try:
        return future.result()
    except pytest.fail.Exception as exc:
        return Run(("export", *args), -9, "", str(exc))


@pytest.mark.parametrize("case", EXPORT_FAILURES, ids=lambda c: c.id)
def test_export_rejects_bad_input(case: ExportCase, export_runs: dict[str, ExportOutcome]) -> None:
    outcome = export_runs[case.id]
    assert_error(outcome.run, case.needles)
    # Whatever was at DIR (nothing, an earlier export, someone else's folder) is exactly as it was.
    assert snapshot(outcome.out) == outcome.before
    assert leftovers(outcome.out) == [], "temporary folders left beside DIR"


def test_export_hub_error_names_the_cache_it_searched(export_runs: dict[str, ExportOutcome]) -> None:
    outcome = export_runs["hub-id-HF_HUB_OFFLINE"]
    assert str(outcome.out.parent / "hf-cache") in outcome.run.stderr, outcome.run.describe()


def test_export_force_replaces_earlier_export(
    export_runs: dict[str, ExportOutcome], tiny_dir: Path, tiny_encoder: Any
) -> None:
    from bert_onnx.runtime import Encoder

    outcome = export_runs["force-replaces-earlier-export"]
    assert outcome.run.returncode == 0, outcome.run.describe()
    assert "Traceback" not in outcome.run.stderr
    folder = outcome.out
    # Exactly the export's files: the earlier folder's stale.txt is gone, so it was swapped out, not written into.
    assert {p.name for p in folder.iterdir()} == {
        *interface.CHECKSUMMED_FILES,
        interface.GATES_FILE,
        interface.MANIFEST_FILE,
    }
    assert leftovers(folder) == [], "temporary folders left beside DIR"
    manifest = Manifest.read(folder)
    manifest.verify_files(folder)
    assert Manifest.read(tiny_dir).opset != 14  # so the check below proves the folder is the new export
    assert manifest.opset == 14
    assert manifest.source == str(checkpoint_path("tiny").resolve())
    assert manifest.parity.sequence_length == 512
    # The CLI's folder embeds like the library's export of the same checkpoint.
    np.testing.assert_allclose(
        Encoder(folder).embed(TEXTS, pooling="mean"), tiny_encoder.embed(TEXTS, pooling="mean"), rtol=0, atol=1e-5
    )


# -- embed ------------------------------------------------------------------------------------------------------


EMBED_OPTIONS = [
    pytest.param((), {}, TINY_HIDDEN, id="default-cls"),
    pytest.param(("--pooling", "pooler"), {"pooling": "pooler"}, TINY_HIDDEN, id="pooler"),
    pytest.param(("--layers=-2:",), {"layers": [-2, -1]}, 2 * TINY_HIDDEN, id="layers-last-two-concat"),
    pytest.param(
        ("--layers", "0,1", "--combine", "mean"), {"layers": [0, 1], "combine": "mean"}, TINY_HIDDEN, id="layers-mean"
    ),
    pytest.param(
        ("--normalize", "--pooling", "mean"), {"normalize": True, "pooling": "mean"}, TINY_HIDDEN, id="normalize"
    ),
    pytest.param(
        ("--batch-size", "2", "--max-length", "8"),
        {"batch_size": 2, "max_length": 8},
        TINY_HIDDEN,
        id="batch-2-truncate-8",
    ),
]


@pytest.mark.parametrize(("extra", "kwargs", "dim"), EMBED_OPTIONS)
def test_embed_matches_encoder(
    extra: tuple[str, ...], kwargs: dict[str, Any], dim: int, tiny_dir: Path, tiny_encoder: Any, tmp_path: Path
) -> None:
    source = write_lines(tmp_path / "texts.txt", TEXTS)
    out = tmp_path / "out.npy"
    run = run_cli(*embed_args(tiny_dir, source, out, *extra))
    assert run.returncode == 0, run.describe()
    # The progress bar goes to stderr and reaches every line.
    assert "embedding" in run.stderr and f"{len(TEXTS)}/{len(TEXTS)}" in run.stderr, run.describe()

    saved = np.load(out)
    assert saved.shape == (len(TEXTS), dim)
    assert saved.dtype == np.float32
    np.testing.assert_allclose(saved, tiny_encoder.embed(TEXTS, **kwargs), rtol=0, atol=1e-6)
    # Row i is line i: embedded alone (other padding, hence the looser tolerance) it gives the same vector.
    single = {k: v for k, v in kwargs.items() if k != "batch_size"}
    for row, text in enumerate(TEXTS):
        np.testing.assert_allclose(saved[row], tiny_encoder.embed([text], **single)[0], rtol=0, atol=1e-5)
    if kwargs.get("normalize"):
        np.testing.assert_allclose(np.linalg.norm(saved, axis=1), 1.0, atol=1e-5)
    assert leftovers(out) == []


def test_embed_reads_stdin(tiny_dir: Path, tiny_encoder: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.npy"
    # A successful run replaces an existing output (atomically, so no temporary file remains).
    out.write_bytes(b"an older file")
    stdin = "".join(text + "\n" for text in TEXTS).encode("utf-8")
    run = run_cli(*embed_args(tiny_dir, "-", out, "--quiet"), stdin=stdin)
    assert run.returncode == 0, run.describe()
    assert "embedding" not in run.stderr, f"--quiet still shows the progress bar\n{run.describe()}"
    np.testing.assert_allclose(np.load(out), tiny_encoder.embed(TEXTS), rtol=0, atol=1e-6)
    assert leftovers(out) == []


@pytest.mark.parametrize("link", [None, os.symlink, os.link], ids=["same-path", "symlink", "hard-link"])
def test_embed_never_writes_over_its_input(tiny_dir: Path, tmp_path: Path, link: Callable[..., None] | None) -> None:
    source = write_lines(tmp_path / "corpus.txt", TEXTS)
    before = source.read_bytes()
    out = source
    if link is not None:
        out = tmp_path / "out.npy"
        link(source, out)
    run = run_cli(*embed_args(tiny_dir, source, out))
    assert_error(run, (f"output {out} is the input file {source}", "destroy the input"))
    assert "embedding" not in run.stderr, "refused only after work began"
    assert source.read_bytes() == before
    assert not parts_dir(out).exists() and leftovers(out) == []


def test_embed_says_a_line_is_at_least_n_tokens_when_it_stopped_counting(tiny_dir: Path, tmp_path: Path) -> None:
    """A long line is tokenized only until it passes --max-length: the message says "at least"."""
    source = write_lines(tmp_path / "long.txt", ["short", "word " * 20_000])
    run = run_cli(*embed_args(tiny_dir, source, tmp_path / "out.npy", "--max-length", "8", "--no-truncation"))
    assert_error(run, ("long.txt: line 2 is at least ", " tokens long, over --max-length 8", "drop --no-truncation"))
    count = int(re.search(r"is at least (\d+) tokens", run.stderr).group(1))  # type: ignore[union-attr]
    assert 8 < count < 20_000, "the count is of a prefix, past the limit and short of the line"


def test_embed_empty_input_writes_empty_array(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.npy"
    run = run_cli(*embed_args(tiny_dir, "-", out))
    assert run.returncode == 0, run.describe()
    saved = np.load(out)
    assert saved.shape == (0, TINY_HIDDEN) and saved.dtype == np.float32


@dataclass(frozen=True)
class EmbedCase:
    """One failing ``bert-onnx embed``; ``{model}``, ``{texts}``, ``{out}`` and ``{tmp}`` fill the paths."""

    id: str
    extra: tuple[str, ...] = ()
    needles: tuple[str, ...] = ()
    code: int = 1
    model: str = "{model}"
    input: str = "{texts}"
    output: str = "{out}"
    tamper: Callable[[Path], None] | None = None
    marks: Sequence[pytest.MarkDecorator] = ()


EMBED_FAILURES = [
    EmbedCase("missing-input", input="{tmp}/missing.txt", needles=("missing.txt", "No such file")),
    EmbedCase("input-is-a-folder", input="{tmp}", needles=("Is a directory",)),
    EmbedCase("non-utf8-file", input="{tmp}/latin1.txt", needles=("latin1.txt", "line 3", "UTF-8")),
    EmbedCase("output-folder-missing", output="{tmp}/no/such/folder/out.npy", needles=("does not exist",)),
    EmbedCase("output-is-a-folder", output="{tmp}/taken", needles=("taken is a folder", "give a file name")),
    EmbedCase("model-dir-missing", model="{tmp}/no-model", needles=("no-model", "not a folder")),
    EmbedCase("model-byte-flipped", tamper=flip_model_byte, needles=("model.onnx", "SHA-256", "does not match")),
    EmbedCase("tokenizer-missing", tamper=remove_tokenizer, needles=("tokenizer.json", "missing")),
    EmbedCase("bad-pooling", extra=("--pooling", "avg"), code=2, needles=("--pooling", "invalid choice", "avg")),
    # A leading minus needs --layers=...; argparse reads "-2:" as an option (the help says so).
    EmbedCase("layers-leading-minus-without-equals", extra=("--layers", "-2:"), code=2, needles=("--layers",)),
    EmbedCase("layers-out-of-range", extra=("--layers", "3"), needles=("layer 3 is out of range", f"0..{TINY_LAYERS}")),
    EmbedCase("layers-garbage", extra=("--layers", "two"), needles=("--layers", "'two' is not an int")),
    EmbedCase("layers-empty-slice", extra=("--layers", "5:"), needles=("selects no hidden state",)),
    EmbedCase("pooler-with-layers", extra=("--pooling", "pooler", "--layers", "1"), needles=("pooler", "no layers")),
    EmbedCase(
        "cuda-on-cpu-only-onnxruntime",
        extra=("--device", "cuda"),
        needles=("CUDAExecutionProvider", "available:", "CPUExecutionProvider"),
        marks=(pytest.mark.skipif(cuda_available(), reason="this onnxruntime offers CUDA"),),
    ),
    EmbedCase("batch-size-0", extra=("--batch-size", "0"), needles=("batch_size=0", "positive")),
    EmbedCase(
        "text-over-max-length-no-truncation",
        extra=("--max-length", "8", "--no-truncation"),
        needles=("line 1 is", "tokens long, over --max-length 8", "drop --no-truncation"),
    ),
]


def _prepare_embed_failure(case: EmbedCase, tmp_path: Path, shared_model: Path) -> tuple[list[str], Path]:
    """Lay out the case's files under ``tmp_path``; return the argv and the output path it names."""
    write_lines(tmp_path / "texts.txt", TEXTS)
    (tmp_path / "latin1.txt").write_bytes("one\ntwo\ncaf\u00e9\n".encode("latin-1"))
    (tmp_path / "taken").mkdir()
    model = shared_model if case.tamper is None else tampered_copy(shared_model, tmp_path / "model", case.tamper)
    fill = {"model": model, "texts": tmp_path / "texts.txt", "out": tmp_path / "out.npy", "tmp": tmp_path}
    out = Path(case.output.format(**fill))
    args = ["embed", case.model.format(**fill), "--input", case.input.format(**fill), "--output", str(out)]
    return [*args, *case.extra], out


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in EMBED_FAILURES])
def test_embed_rejects_bad_input(case: EmbedCase, tiny_dir: Path, tmp_path: Path) -> None:
    args, out = _prepare_embed_failure(case, tmp_path, tiny_dir)
    before = snapshot(out)
    run = run_cli(*args)
    assert_error(run, case.needles, code=case.code)
    assert snapshot(out) == before, "the output path changed on failure"
    assert not out.is_file()
    assert leftovers(out) == [], "temporary files left beside the output"
    assert not parts_dir(out).exists(), "a parts folder without a finished chunk was left behind"


PRESERVE_IDS = ("model-byte-flipped", "text-over-max-length-no-truncation")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in EMBED_FAILURES if c.id in PRESERVE_IDS])
def test_embed_failure_keeps_existing_output(case: EmbedCase, tiny_dir: Path, tmp_path: Path) -> None:
    # Failures while loading the model and in the middle of embedding: the latest points a run can fail at.
    args, out = _prepare_embed_failure(case, tmp_path, tiny_dir)
    earlier = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(out, earlier)
    before = out.read_bytes()
    run = run_cli(*args)
    assert_error(run, case.needles, code=case.code)
    assert out.read_bytes() == before
    assert leftovers(out) == []


# -- info -------------------------------------------------------------------------------------------------------


def test_info_shows_manifest(tiny_dir: Path) -> None:
    run = run_cli("info", tiny_dir)
    assert run.returncode == 0, run.describe()
    manifest = Manifest.read(tiny_dir)
    text = run.stdout

    def row(key: str, value: str) -> None:
        assert re.search(rf"^{re.escape(key)}\s+{re.escape(value)}$", text, re.MULTILINE), f"{key}: {value}\n{text}"

    row("source", manifest.source)
    row("layers", str(TINY_LAYERS))
    row("hidden size", str(TINY_HIDDEN))
    row("opset", str(manifest.opset))
    row("checksums", "verified")
    row("outputs", f"{len(manifest.outputs)}: " + ", ".join(interface.output_names(TINY_LAYERS)))
    for name, digest in manifest.files.items():
        row(f"  {name}", f"sha256 {digest}")
    # The parity table: a header, then every output with its diff, tolerance and verdict.
    assert re.search(r"^check\s+measured\s+limit\s+result$", text, re.MULTILINE), text
    for name in interface.output_names(TINY_LAYERS):
        line = rf"^{re.escape(name)} max abs diff\s+\S+\s+<= 0\.0001\s+ok$"
        assert re.search(line, text, re.MULTILINE), f"{name}\n{text}"


def test_info_no_verify_skips_checksums(tiny_dir: Path, tmp_path: Path) -> None:
    folder = tampered_copy(tiny_dir, tmp_path / "model", flip_model_byte)
    run = run_cli("info", folder, "--no-verify")
    assert run.returncode == 0, run.describe()
    assert re.search(r"^checksums\s+not checked \(--no-verify\)$", run.stdout, re.MULTILINE), run.stdout
    assert "verified" not in run.stdout


@pytest.mark.parametrize(
    ("tamper", "needles"),
    [
        pytest.param(append_model_byte, ("model.onnx", "SHA-256", "does not match"), id="model-byte-appended"),
        pytest.param(remove_tokenizer, ("tokenizer.json", "missing"), id="tokenizer-missing"),
        pytest.param(remove_manifest, ("manifest.json", "missing"), id="manifest-missing"),
        pytest.param(corrupt_manifest, ("manifest.json", "not valid JSON"), id="manifest-not-json"),
        pytest.param(future_manifest, ("format_version 99", "upgrade bert-onnx"), id="manifest-from-the-future"),
    ],
)
def test_info_rejects_bad_folder(
    tamper: Callable[[Path], None], needles: tuple[str, ...], tiny_dir: Path, tmp_path: Path
) -> None:
    folder = tampered_copy(tiny_dir, tmp_path / "model", tamper)
    run = run_cli("info", folder)
    assert_error(run, needles)
    assert run.stdout == "", "a failing info must not print half a report"


def test_info_missing_folder(tmp_path: Path) -> None:
    assert_error(run_cli("info", tmp_path / "nowhere"), ("nowhere", "manifest.json", "bert-onnx export"))
