"""Ray Data integration: embed a corpus on a Ray cluster with the same results as one process.

    import ray
    from bert_onnx.integrations.ray import RayEmbedder

    ds = ray.data.read_parquet("corpus.parquet")
    ds = ds.map_batches(
        RayEmbedder,
        fn_constructor_kwargs={"model_dir": "/shared/bert-onnx-model", "pooling": "mean"},
        concurrency=4,          # actors
        num_cpus=2,             # CPUs per actor: ONNX Runtime gets exactly these threads
        batch_size=1024,        # rows per call: the actor sorts them by length and batches them itself
        batch_format="numpy",
    )

Each actor loads the model folder once, verifying its checksums, with ONNX Runtime's threads set to the CPUs Ray
gave the actor. Each call sorts its rows by token length, runs them in padded-to-their-own-length batches (exactly
``Encoder.embed``) and restores the order. The embeddings come back as one fixed-size float32 array column
(``(rows, dim)``: Ray's tensor column, Parquet's fixed-size list), not Python lists. A row whose text is null, not
a string, or not valid Unicode is not dropped and does not stop the job: it gets a NaN vector and a message in the
``error`` column, so the caller can report it by id.

Nothing here is imported unless asked for: ``import bert_onnx`` never imports Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_onnx.runtime.encoder import Encoder
from bert_onnx.runtime.inputs import check_texts

ERROR_COLUMN = "error"


def _actor_cpus() -> int | None:
    """CPUs Ray assigned to this actor or task (None outside Ray, letting ONNX Runtime choose)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not inside a Ray worker
        return None
    return max(1, int(cpus)) if cpus else None


def row_error(text: Any) -> str | None:
    """Why ``text`` cannot be embedded, or None if it can."""
    if text is None:
        return "text is null"
    if not isinstance(text, str):
        return f"text is {type(text).__name__}, expected a string"
    try:
        check_texts([text])
    except (TypeError, ValueError) as exc:
        return str(exc).replace("texts[0] ", "text ")
    return None


class RayEmbedder:
    """A callable class for ``Dataset.map_batches(..., batch_format="numpy")``; see the module docstring.

    ``text_column`` is read; every input column is passed through; ``output_column`` (float32, ``(rows, dim)``)
    and ``error`` (None, or why the row has a NaN vector) are added. ``pooling``, ``layers``, ``combine``,
    ``normalize``, ``max_length``, ``batch_size`` and ``max_tokens`` are ``Encoder.embed``'s; ``threads`` defaults
    to the CPUs Ray assigned to the actor.
    """

    def __init__(
        self,
        model_dir: str | Path,
        text_column: str = "text",
        output_column: str = "embedding",
        pooling: str = "cls",
        layers: int | Sequence[int] | None = None,
        combine: str = "concat",
        normalize: bool = False,
        max_length: int | None = None,
        batch_size: int = 32,
        max_tokens: int = 8192,
        variant: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.encoder = Encoder(model_dir, threads=threads or _actor_cpus(), variant=variant)
        self.text_column, self.output_column = text_column, output_column
        self.options: dict[str, Any] = {
            "pooling": pooling,
            "layers": layers,
            "combine": combine,
            "normalize": normalize,
            "max_length": max_length,
            "batch_size": batch_size,
            "max_tokens": max_tokens,
        }
        self.dim = int(self.encoder.embed([], **self.options).shape[1])  # checks the options once, up front

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.text_column not in batch:
            raise KeyError(f"no column {self.text_column!r} in the batch (columns: {', '.join(batch)})")
        texts = batch[self.text_column]
        given = batch.get(ERROR_COLUMN)  # errors the driver already found (the text is null then)
        errors = [
            given[i] if given is not None and given[i] is not None else row_error(text) for i, text in enumerate(texts)
        ]
        good = [i for i, e in enumerate(errors) if e is None]
        vectors = np.full((len(texts), self.dim), np.nan, dtype=np.float32)
        if good:
            vectors[good] = self.encoder.embed([texts[i] for i in good], **self.options)
        return {
            **batch,
            self.output_column: vectors,
            ERROR_COLUMN: np.array(errors, dtype=object),
        }


# -- the driver behind `bert-onnx embed --engine ray` --------------------------------------------------------------

INDEX_FORMAT = "bert-onnx-ray-embed"
INDEX_VERSION = 1


def _clean(value: Any) -> tuple[str | None, str | None]:
    """(text to embed, None) or (None, why the row cannot be embedded)."""
    error = row_error(value)
    return (value, None) if error is None else (None, error)


def read_input(path: Path, text_column: str, id_column: str) -> Any:
    """Ids, texts and per-row errors of a Parquet or JSONL file as an Arrow table.

    A null, non-string or invalid-Unicode text keeps its row: its text becomes null and ``error`` says why.
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ValueError(f"--input {path}: No such file")
    if path.suffix.lower() == ".parquet":
        schema = pq.read_schema(path)
        missing = [c for c in (id_column, text_column) if c not in schema.names]
        if missing:
            raise ValueError(f"{path}: no column(s) {', '.join(missing)} (it has {', '.join(schema.names)})")
        table = pq.read_table(path, columns=[id_column, text_column])
        ids, raw = table.column(id_column), table.column(text_column).to_pylist()
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        ids_list, raw = [], []
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{path}: line {number} is not JSON ({exc})") from exc
                if not isinstance(row, dict) or id_column not in row:
                    raise ValueError(f"{path}: line {number} has no {id_column!r} field")
                ids_list.append(row[id_column])
                raw.append(row.get(text_column))
        ids = pa.array(ids_list)
    else:
        raise ValueError(f"--input {path}: expected a .parquet or .jsonl file")
    texts, errors = zip(*map(_clean, raw), strict=True) if raw else ((), ())
    return pa.table(
        {
            id_column: ids,
            text_column: pa.array(list(texts), pa.string()),
            ERROR_COLUMN: pa.array(list(errors), pa.string()),
        }
    )


def _part(output: Path, number: int) -> Path:
    return output / f"part-{number:05d}.parquet"


def _write_part(path: Path, rows: dict[str, np.ndarray], id_column: str, output_column: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bert_onnx._files import atomic_write

    vectors = np.ascontiguousarray(rows[output_column], dtype=np.float32)
    table = pa.table(
        {
            id_column: pa.array(rows[id_column]),
            output_column: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
            # Ray hands back an all-None object column as float NaN: keep only real messages.
            ERROR_COLUMN: pa.array([e if isinstance(e, str) else None for e in rows[ERROR_COLUMN]], pa.string()),
        }
    )
    atomic_write(path, lambda handle: pq.write_table(table, handle))


def embed_to_parquet(
    model_dir: Path,
    input_path: Path,
    output: Path,
    *,
    text_column: str = "text",
    id_column: str = "id",
    address: str | None = None,
    actors: int = 1,
    cpus_per_actor: int = 1,
    rows_per_part: int = 10_000,
    rows_per_call: int | None = None,
    resume: bool = False,
    recipe: dict[str, Any] | None = None,
    progress: Any = None,
    log: Any = print,
) -> dict[str, Any]:
    """Embed ``input_path`` on Ray into Parquet parts under ``output``; return a summary.

    Parts hold ``rows_per_part`` consecutive input rows each (id, embedding, error) and are written atomically by
    the driver in input order, with ``index.json`` listing the finished ones and the run's settings. A rerun with
    ``resume`` checks the settings and parts and continues after the last finished part, so no row is written twice
    or lost. Bad rows (null, non-string or invalid text) are kept with a NaN vector and a message, and listed.
    """
    import json

    import ray

    from bert_onnx._files import atomic_write_text
    from bert_onnx.embed_job import remove_stale_temporaries, scan, settings_changes
    from bert_onnx.manifest import Manifest, sha256_file

    recipe = dict(recipe or {})
    table = read_input(input_path, text_column, id_column)
    manifest = Manifest.read(model_dir)
    settings = {
        "input": str(input_path.resolve()),
        "input_sha256": scan(input_path)[0],
        "rows": table.num_rows,
        "model": str(Path(model_dir).resolve()),
        "model_files": manifest.files,
        "text_column": text_column,
        "id_column": id_column,
        "rows_per_part": rows_per_part,
        **{k: v for k, v in recipe.items()},
    }
    index_path = output / "index.json"
    done: dict[int, dict[str, Any]] = {}
    if output.exists() and any(output.iterdir()):
        if not resume:
            raise ValueError(f"--output {output} is not empty; pass --resume to continue a run there")
        try:
            body = json.loads(index_path.read_text())
            stored = body["settings"]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{index_path}: cannot resume from it ({exc})") from exc
        details = settings_changes(stored, settings)
        if details:
            raise ValueError(f"{output} was started with other settings ({details})")
        for key, record in body["parts"].items():
            path = _part(output, int(key))
            if path.is_file() and sha256_file(path) == record["sha256"]:
                done[int(key)] = record
    output.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output)

    def save_index() -> None:
        body = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "settings": settings, "parts": done}
        atomic_write_text(index_path, json.dumps(body, indent=1, default=str) + "\n")

    save_index()
    parts = (table.num_rows + rows_per_part - 1) // rows_per_part
    first = 0
    while first in done:
        first += 1
    if progress is not None:
        progress(min(first * rows_per_part, table.num_rows))
    if first < parts:
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # parts are consecutive input rows
        context.enable_progress_bars = False
        dataset = ray.data.from_arrow(table.slice(first * rows_per_part))
        embedded = dataset.map_batches(
            RayEmbedder,
            fn_constructor_kwargs={"model_dir": str(model_dir), "text_column": text_column, **recipe},
            # Calls no bigger than a part, so parts are written as calls finish, not all at the end.
            batch_size=rows_per_call or min(1024, rows_per_part),
            batch_format="numpy",
            concurrency=actors,
            num_cpus=cpus_per_actor,
            # Ray Data restarts a dead actor and retries its task by default (max_restarts=-1,
            # max_task_retries=-1): a lost worker costs time, never rows.
        )
        # Batches of exactly rows_per_part rows (the last one shorter), in input order: one part each.
        for number, batch in enumerate(
            embedded.iter_batches(batch_size=rows_per_part, batch_format="numpy"), start=first
        ):
            _write_part(_part(output, number), batch, id_column, "embedding")
            rows = len(batch[id_column])
            done[number] = {"rows": rows, "sha256": sha256_file(_part(output, number))}
            save_index()
            if progress is not None:
                progress(rows)
    import pyarrow.parquet as pq

    bad = []
    for number in sorted(done):
        part = pq.read_table(_part(output, number), columns=[id_column, ERROR_COLUMN]).to_pylist()
        bad += [(row[id_column], row[ERROR_COLUMN]) for row in part if row[ERROR_COLUMN] is not None]
    written = sum(r["rows"] for r in done.values())
    if written != table.num_rows:
        raise RuntimeError(f"{output}: {written} rows written for {table.num_rows} input rows")
    return {"rows": written, "parts": len(done), "bad_rows": bad}
