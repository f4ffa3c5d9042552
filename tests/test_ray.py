"""Ray Data: a real local Ray cluster started here; results identical to one process, every row exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import PACKAGE_ROOT, assert_error, checkpoint_path, cli_env, run_cli, wait_for

ray = pytest.importorskip("ray", reason="Ray is the [ray] extra, which the test environment installs")

from bert_onnx.export.corpus import documentation_paragraphs  # noqa: E402
from bert_onnx.integrations.ray import RayEmbedder  # noqa: E402
from bert_onnx.runtime import EmbedRecipe, Encoder  # noqa: E402

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster with 2 CPUs; workers import bert_onnx and the test helpers from this checkout."""
    path = f"{PACKAGE_ROOT}:{TESTS}"
    # address="local": always a new cluster of our own, never one some other process left running.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    paragraphs = list(documentation_paragraphs())
    return [paragraphs[(i * 7) % len(paragraphs)] for i in range(240)]


def _rows(texts: list[str]) -> list[dict[str, Any]]:
    return [{"id": 1000 + i, "text": t} for i, t in enumerate(texts)]


def _embed(dataset: Any, cls: type = RayEmbedder, **kwargs: Any) -> dict[int, np.ndarray]:
    out = dataset.map_batches(
        cls,
        fn_constructor_kwargs=kwargs,
        concurrency=2,
        num_cpus=1,
        batch_size=40,
        batch_format="numpy",
    ).take_all()
    ids = [int(r["id"]) for r in out]
    assert len(ids) == len(set(ids)), "a row came back twice"
    return {int(r["id"]): np.asarray(r["embedding"]) for r in out}


def test_map_batches_matches_single_process(
    cluster: str, texts: list[str], export_dir: Callable[[str], Path], encoder: Callable[[str], Any]
) -> None:
    got = _embed(ray.data.from_items(_rows(texts)), model_dir=str(export_dir("minilm")), pooling="mean")
    expected = encoder("minilm").embed(texts, pooling="mean")
    assert sorted(got) == [1000 + i for i in range(len(texts))]
    worst = max(float(np.abs(got[1000 + i] - expected[i]).max()) for i in range(len(texts)))
    assert worst <= 1e-5, worst


def test_layers_recipe_and_actor_threads(cluster: str, texts: list[str], export_dir: Callable[[str], Path]) -> None:
    from bert_onnx.runtime import Encoder

    got = _embed(ray.data.from_items(_rows(texts[:50])), model_dir=str(export_dir("tiny")), layers=[-2, -1])
    expected = Encoder(export_dir("tiny")).embed(texts[:50], layers=[-2, -1])
    assert got[1000].shape == (64,)
    np.testing.assert_allclose(np.stack([got[1000 + i] for i in range(50)]), expected, atol=1e-5)


def test_an_actor_killed_mid_run_loses_and_repeats_no_row(
    cluster: str, texts: list[str], export_dir: Callable[[str], Path], encoder: Callable[[str], Any], tmp_path: Path
) -> None:
    from ray_helpers import DiesOnce

    marker = tmp_path / "die"
    marker.write_text("x")
    got = _embed(
        ray.data.from_items(_rows(texts)),
        cls=DiesOnce,
        marker=str(marker),
        model_dir=str(export_dir("tiny")),
    )
    assert not marker.exists() and marker.with_suffix(".claimed").exists(), "no actor died: nothing was tested"
    expected = encoder("tiny").embed(texts)
    assert sorted(got) == [1000 + i for i in range(len(texts))]
    np.testing.assert_allclose(np.stack([got[1000 + i] for i in range(len(texts))]), expected, atol=1e-5)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read_parts(folder: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for part in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(part)
        assert str(table.schema.field("embedding").type).startswith("fixed_size_list<element: float>")
        rows += table.to_pylist()
    return rows


def test_cli_jsonl_with_bad_rows(
    cluster: str, texts: list[str], export_dir: Callable[[str], Path], encoder: Callable[[str], Any], tmp_path: Path
) -> None:
    rows: list[dict[str, Any]] = _rows(texts[:60])
    rows[3]["text"] = None
    rows[10]["text"] = 42
    rows[11] = {"id": rows[11]["id"]}  # no text field at all
    source = tmp_path / "in.jsonl"
    _write_jsonl(source, rows)
    with open(source, "a", encoding="utf-8") as handle:  # a lone surrogate, escaped as JSON allows
        handle.write('{"id": 5000, "text": "bad \\ud800 text"}\n')
    out = tmp_path / "out"
    args = ["embed", export_dir("minilm"), "--engine", "ray", "--address", cluster, "--input", source]
    run = run_cli(*args, "--output", out, "--chunk-size", "16", "--pooling", "mean", "--actors", "2", timeout=300)
    assert run.returncode == 0, run.describe()
    written = _read_parts(out)
    assert [r["id"] for r in written] == [r["id"] for r in rows] + [5000], "rows lost, repeated or reordered"
    errors = {r["id"]: r["error"] for r in written if r["error"] is not None}
    assert set(errors) == {1003, 1010, 1011, 5000}
    assert errors[1003] == "text is null" and errors[1011] == "no 'text' field"
    assert errors[1010] == "text is int, expected a string"
    assert "lone surrogate U+D800" in errors[5000]
    for row_id in errors:
        assert f"row id={row_id}" in run.stderr, run.describe()
        assert np.isnan(next(r["embedding"] for r in written if r["id"] == row_id)).all()
    good = [(r["id"], r["text"]) for r in rows if r.get("text") is not None and isinstance(r["text"], str)]
    expected = encoder("minilm").embed([t for _, t in good], pooling="mean")
    by_id = {r["id"]: np.asarray(r["embedding"], dtype=np.float32) for r in written}
    worst = max(float(np.abs(by_id[i] - expected[k]).max()) for k, (i, _) in enumerate(good))
    assert worst <= 1e-5, worst


def test_cli_resume_after_kill(
    cluster: str, texts: list[str], export_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = texts * 2  # 24 parts of 20 rows: room to be killed well before the end
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(_rows(texts)), source)
    model = export_dir("tiny")  # the same rows either way; the real weights are covered above
    reference = tmp_path / "reference"
    base = ["embed", model, "--engine", "ray", "--address", cluster, "--input", source, "--chunk-size", "20"]
    run = run_cli(*base, "--output", reference, timeout=300)
    assert run.returncode == 0, run.describe()
    before = {p.name: p.read_bytes() for p in reference.iterdir()}
    assert_error(run_cli(*base, "--output", reference), ("holds a finished run (24 part(s))", "delete that folder"))
    assert {p.name: p.read_bytes() for p in reference.iterdir()} == before

    out = tmp_path / "out"
    command = [sys.executable, "-m", "bert_onnx", *map(str, base), "--output", str(out), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())

    def two_parts() -> bool:
        assert process.poll() is None, process.communicate()[1].decode()
        return len(list(out.glob("part-*.parquet"))) >= 2

    try:
        wait_for(two_parts, 240, "2 finished Parquet parts")
    finally:
        process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(out.glob("part-*.parquet")))
    assert 2 <= finished < len(texts) // 20, f"{finished} parts: not interrupted mid-way"

    assert_error(run_cli(*base, "--output", out), ("not empty", "--resume"))
    run = run_cli(*base, "--output", out, "--resume", timeout=300)
    assert run.returncode == 0, run.describe()
    again, first = _read_parts(out), _read_parts(reference)
    assert [r["id"] for r in again] == [r["id"] for r in first] == [r["id"] for r in _rows(texts)]
    worst = max(
        float(np.abs(np.asarray(a["embedding"]) - np.asarray(b["embedding"])).max())
        for a, b in zip(again, first, strict=True)
    )
    assert worst <= 1e-5, worst


JSONL_ERRORS = [
    pytest.param(
        '{"id": 1, "body": "a"}\n{"id": 2, "body": "b"}\n',
        "no line has a 'text' field (line 1 has 'id', 'body'); name the text field with --text-column",
        id="wrong-text-column",
    ),
    pytest.param(
        '{"id": 1, "text": "a"}\n\n{"id": "x", "text": "b"}\n',
        "line 3: id 'x' is a string, but line 1's is a number; every 'id' must be of one type",
        id="mixed-id-types",
    ),
    pytest.param(
        '{"id": [1], "text": "a"}\n{"id": ["x"], "text": "b"}\n',
        "its 'id' values cannot form one column",
        id="mixed-nested-ids",
    ),
    pytest.param('{"key": 1, "text": "a"}\n', "line 1 has no 'id' field (it has 'key', 'text')", id="no-id"),
    pytest.param('{"id": 1, "text": "a"}\n[2, "b"]\n', "line 2 is a JSON array, not an object", id="not-an-object"),
]


@pytest.mark.parametrize(("body", "message"), JSONL_ERRORS)
def test_bad_jsonl_is_refused_naming_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    from bert_onnx.errors import InvalidValueError
    from bert_onnx.integrations.ray import read_input

    source = tmp_path / "in.jsonl"
    source.write_text(body, encoding="utf-8")
    with pytest.raises(InvalidValueError) as caught:
        read_input(source, "text", "id")
    assert str(caught.value) == f"{source}: {message}" or str(caught.value).startswith(f"{source}: {message}")


@pytest.mark.parametrize(
    "content",
    [pytest.param(b"hello\n", id="not-parquet"), pytest.param(b"PAR1" + b"\0" * 64 + b"PAR1", id="damaged")],
)
def test_a_file_that_is_not_parquet_is_refused(tmp_path: Path, content: bytes) -> None:
    from bert_onnx.errors import InvalidValueError
    from bert_onnx.integrations.ray import read_input

    source = tmp_path / "in.parquet"
    source.write_bytes(content)
    with pytest.raises(InvalidValueError, match=f"^{source}: cannot be read as Parquet"):
        read_input(source, "text", "id")


def test_cli_refuses_a_wrong_text_column_before_any_work(export_dir: Callable[[str], Path], tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out"
    _write_jsonl(source, [{"id": 1, "body": "a"}, {"id": 2, "body": "b"}])
    run = run_cli("embed", export_dir("tiny"), source, "--engine", "ray", "--output", out, timeout=300)
    assert_error(run, (f"{source}: no line has a 'text' field (line 1 has 'id', 'body')", "--text-column"))
    assert not out.exists()


@pytest.mark.parametrize("inside", [True, False], ids=["output-holds-input", "output-is-input"])
def test_an_output_folder_that_holds_the_input_is_refused(
    export_dir: Callable[[str], Path], tmp_path: Path, inside: bool
) -> None:
    from bert_onnx.errors import InvalidValueError
    from bert_onnx.integrations.ray import embed_to_parquet

    out = tmp_path / "out"
    out.mkdir()
    source = out / "in.jsonl" if inside else tmp_path / "in.jsonl"
    _write_jsonl(source, [{"id": 1, "text": "a"}])
    before = source.read_bytes()
    message = "the folder this job writes its parts into" if inside else "is the input file"
    with pytest.raises(InvalidValueError, match=message):
        embed_to_parquet(export_dir("tiny"), source, out if inside else source)
    assert source.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == (["in.jsonl"] if inside else []), "nothing written"


def test_a_folder_recipe_is_the_default_on_ray(
    cluster: str, texts: list[str], export_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """A sentence-transformers layout (max pooling, 24 tokens, lower-casing) gives its own vectors on Ray with no
    recipe named, through RayEmbedder and through `bert-onnx embed --engine ray`: sentence-transformers' encode."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer

    model = export_dir("tiny-st-max")
    sample = [t.upper() if i % 3 == 0 else t for i, t in enumerate(texts[:60])]
    expected = SentenceTransformer(str(checkpoint_path("tiny-st-max")), device="cpu").encode(sample)
    got = _embed(ray.data.from_items(_rows(sample)), model_dir=str(model))
    assert max(float(np.abs(got[1000 + i] - expected[i]).max()) for i in range(len(sample))) <= 1e-5
    source, out = tmp_path / "in.parquet", tmp_path / "out"
    pq.write_table(pa.Table.from_pylist(_rows(sample)), source)
    run = run_cli("embed", model, source, "--engine", "ray", "--address", cluster, "--output", out, timeout=300)
    assert run.returncode == 0, run.describe()
    written = np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in _read_parts(out)])
    assert float(np.abs(written - expected).max()) <= 1e-5
    index = json.loads((out / "index.json").read_text())
    assert index["settings"]["pooling"] == "max" and "batch_size" not in index["settings"]


def test_no_ray_import_without_engine_ray(export_dir: Callable[[str], Path], tmp_path: Path) -> None:
    argv = ["embed", str(export_dir("tiny")), "--input", "-", "--output", str(tmp_path / "o.npy")]
    script = f"import sys; from bert_onnx.cli import main; code = main({argv!r}); print('ray' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", script], input=b"one\ntwo\n", capture_output=True, env=cli_env(), check=True
    )
    assert done.stdout.decode().strip() == "False"


def test_a_text_with_no_token_left_to_pool_is_a_bad_row(export_dir: Callable[[str], Path]) -> None:
    """A text whose tokens all merge into a prompt left out of pooling ("aac" + "hen": one word piece) is reported
    as a bad row with a NaN vector; its batchmates are embedded as Encoder.embed embeds them. Called in process:
    the per-batch call is what each actor runs."""
    model = export_dir("tiny")
    recipe = EmbedRecipe(pooling="max", prompt="aac", include_prompt=False)
    texts = np.array(["a fine text", "hen", "another"], dtype=object)
    out = RayEmbedder(model, recipe=recipe)({"id": np.arange(3), "text": texts})
    assert out["error"][0] is None and out["error"][2] is None
    assert "leaves no token to pool" in out["error"][1] and np.isnan(out["embedding"][1]).all()
    expected = Encoder(model).embed_recipe(["a fine text", "another"], recipe)
    np.testing.assert_allclose(out["embedding"][[0, 2]], expected, rtol=0, atol=1e-6)
