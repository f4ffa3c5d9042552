"""Ray Data integration: embed a corpus on a Ray cluster with the same results as one process.

    import ray
    from bert_onnx.integrations.ray import RayEmbedder

    ds = ray.data.read_parquet("corpus.parquet")
    ds = ds.map_batches(
        RayEmbedder,
        fn_constructor_kwargs={"model_dir": "/shared/bert-onnx-model"},  # its own recipe; or "pooling": "mean"...
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

from pathlib import Path
from typing import Any

import numpy as np

from bert_onnx.errors import IncompleteRunError, InvalidTypeError, InvalidValueError
from bert_onnx.runtime.encoder import Encoder
from bert_onnx.runtime.inputs import check_texts
from bert_onnx.runtime.recipe import Batching, EmbedRecipe, folder_recipe

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
    and ``error`` (None, or why the row has a NaN vector) are added. The embedding is ``recipe`` (an
    :class:`EmbedRecipe`), or the folder's own recipe with the fields given as keywords in its place
    (``pooling="mean"``, ``prompt_name="query"``, ...; none: the folder's recipe as it is); with
    ``truncation=False`` a text over ``max_length`` tokens is a bad row. ``batching`` (or ``batch_size`` and
    ``max_tokens`` as keywords) bounds each model call. ``threads`` defaults to the CPUs Ray assigned to the actor.
    """

    def __init__(
        self,
        model_dir: str | Path,
        text_column: str = "text",
        output_column: str = "embedding",
        recipe: EmbedRecipe | None = None,
        variant: str | None = None,
        threads: int | None = None,
        batching: Batching | None = None,
        **fields: Any,
    ) -> None:
        batch_fields = {k: fields.pop(k) for k in ("batch_size", "max_tokens") if k in fields}
        if batching is not None and batch_fields:
            raise InvalidTypeError(f"pass batching= or its fields ({', '.join(batch_fields)}), not both")
        if recipe is not None and fields:
            raise InvalidTypeError(f"pass recipe= or its fields ({', '.join(fields)}), not both")
        self.batching = Batching(**batch_fields) if batching is None else batching
        # fp32 unless told: actors on different machines must not each follow their own tuned profile.
        self.encoder = Encoder(model_dir, threads=threads or _actor_cpus(), variant=variant or "fp32")
        self.recipe = self.encoder.resolve_recipe(**fields) if recipe is None else recipe
        self.text_column, self.output_column = text_column, output_column
        self.dim = self.encoder.dim(self.recipe)  # checks the recipe once, up front
        self.max_length = self.recipe.max_length or self.encoder.max_length
        self.pooling = self.encoder.pooling_for(self.recipe)

    def _too_long(self, texts: list[str]) -> list[str | None]:
        """With truncation off, why each text is too long (or None): such a row is reported, not embedded."""
        if self.recipe.truncation:
            return [None] * len(texts)
        prompt = self.recipe.prompt or ""
        counts = self.encoder.tokenizer.token_counts([prompt + text for text in texts])
        return [
            None if n <= self.max_length else f"text is {n} tokens long, over max_length={self.max_length}"
            for n in counts
        ]

    def _unpooled(self, texts: list[str]) -> list[str | None]:
        """Why each text would have no token to pool (or None): one whose tokens all merge into a prompt that the
        recipe leaves out of pooling is a bad row, not a failed batch."""
        if not self.pooling.unpooled([0]):  # no prompt left out of pooling: every text keeps a token
            return [None] * len(texts)
        prompt = self.recipe.prompt or ""
        found = self.encoder.tokenizer.encodings([prompt + text for text in texts], self.max_length)
        empty = set(self.pooling.unpooled([len(e.ids) for e in found]))
        why = "leaves no token to pool: its tokens merged into the prompt's, which include_prompt=False leaves out"
        return [f"text {why}" if i in empty else None for i in range(len(texts))]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.text_column not in batch:
            raise KeyError(f"no column {self.text_column!r} in the batch (columns: {', '.join(batch)})")
        texts = batch[self.text_column]
        given = batch.get(ERROR_COLUMN)  # errors the driver already found (the text is null then)
        errors = [
            given[i] if given is not None and given[i] is not None else row_error(text) for i, text in enumerate(texts)
        ]
        good = [i for i, e in enumerate(errors) if e is None]
        for i, error in zip(good, self._too_long([texts[i] for i in good]), strict=True):
            errors[i] = error
        good = [i for i, e in enumerate(errors) if e is None]
        for i, error in zip(good, self._unpooled([texts[i] for i in good]), strict=True):
            errors[i] = error
        good = [i for i, e in enumerate(errors) if e is None]
        vectors = np.full((len(texts), self.dim), np.nan, dtype=np.float32)
        if good:
            vectors[good] = self.encoder.embed_recipe([texts[i] for i in good], self.recipe, batching=self.batching)
        return {
            **batch,
            self.output_column: vectors,
            ERROR_COLUMN: np.array(errors, dtype=object),
        }


# -- the driver behind `bert-onnx embed --engine ray` --------------------------------------------------------------


MISSING = object()  # a JSONL row without the text field


def _clean(value: Any, text_column: str) -> tuple[str | None, str | None]:
    """(text to embed, None) or (None, why the row cannot be embedded)."""
    if value is MISSING:
        return None, f"no {text_column!r} field"
    error = row_error(value)
    return (value, None) if error is None else (None, error)


def read_input(path: Path, text_column: str, id_column: str) -> Any:
    """Ids, texts and per-row errors of a Parquet or JSONL file as an Arrow table.

    A null, missing, non-string or invalid-Unicode text keeps its row: its text becomes null and ``error`` says
    why. A file that cannot be read as its kind, a missing column (a JSONL field no line has, an id a line lacks),
    or ids of mixed types raise :class:`~bert_onnx.errors.InvalidValueError` naming the file (and line, for JSONL).
    """
    if not path.is_file():
        raise InvalidValueError(f"{path}: No such file")
    if path.suffix.lower() == ".parquet":
        ids, raw = _read_parquet(path, text_column, id_column)
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        ids, raw = _read_jsonl(path, text_column, id_column)
    else:
        raise InvalidValueError(f"{path}: expected a .parquet or .jsonl file")
    import pyarrow as pa

    texts, errors = zip(*(_clean(value, text_column) for value in raw), strict=True) if raw else ((), ())
    return pa.table(
        {
            id_column: ids,
            text_column: pa.array(list(texts), pa.string()),
            ERROR_COLUMN: pa.array(list(errors), pa.string()),
        }
    )


def _read_parquet(path: Path, text_column: str, id_column: str) -> tuple[Any, list[Any]]:
    """The id column (Arrow) and the texts of a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        missing = [c for c in (id_column, text_column) if c not in schema.names]
        if missing:
            raise InvalidValueError(f"{path}: no column(s) {', '.join(missing)} (it has {', '.join(schema.names)})")
        table = pq.read_table(path, columns=[id_column, text_column])
    except (pa.ArrowException, OSError) as exc:  # not Parquet, truncated, or damaged (some say OSError)
        raise InvalidValueError(f"{path}: cannot be read as Parquet ({exc})") from exc
    return table.column(id_column), table.column(text_column).to_pylist()


def _json_kind(value: Any) -> str:
    """JSON's name for the type of a parsed value (ints and floats are both numbers, as in one Arrow column)."""
    kinds = ((bool, "boolean"), (int | float, "number"), (str, "string"), (list, "array"), (dict, "object"))
    return next((name for types, name in kinds if isinstance(value, types)), type(value).__name__)


def _fields(row: dict[str, Any]) -> str:
    return ", ".join(map(repr, row)) or "no fields"


def _read_jsonl(path: Path, text_column: str, id_column: str) -> tuple[Any, list[Any]]:
    """The ids (Arrow) and the texts of a JSONL file: one object per line, each with an id, all ids of one JSON type.
    A line without the text field gets :data:`MISSING` (a bad row); a file where no line has it is refused."""
    import json

    import pyarrow as pa

    ids, raw = [], []
    first: tuple[int, str] | None = None  # the line of the first non-null id, and its kind
    keys: tuple[int, str] | None = None  # the first row's line and fields
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InvalidValueError(f"{path}: line {number} is not JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise InvalidValueError(f"{path}: line {number} is a JSON {_json_kind(row)}, not an object")
            if id_column not in row:
                raise InvalidValueError(f"{path}: line {number} has no {id_column!r} field (it has {_fields(row)})")
            if keys is None:
                keys = (number, _fields(row))
            value = row[id_column]
            if value is not None:
                if first is None:
                    first = (number, _json_kind(value))
                elif _json_kind(value) != first[1]:
                    raise InvalidValueError(
                        f"{path}: line {number}: {id_column} {value!r} is a {_json_kind(value)}, but line {first[0]}'s "
                        f"is a {first[1]}; every {id_column!r} must be of one type"
                    )
            ids.append(value)
            raw.append(row.get(text_column, MISSING))
    if keys is not None and all(value is MISSING for value in raw):  # a wrong name, not rows without a text
        raise InvalidValueError(
            f"{path}: no line has a {text_column!r} field (line {keys[0]} has {keys[1]}); name the text field with "
            "--text-column (text_column=)"
        )
    try:
        return pa.array(ids), raw
    except (pa.ArrowException, OverflowError) as exc:  # e.g. nested values of mixed types, a too large integer
        raise InvalidValueError(f"{path}: its {id_column!r} values cannot form one column ({exc})") from exc


def _parquet_writer(rows: dict[str, np.ndarray], id_column: str, output_column: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.ascontiguousarray(rows[output_column], dtype=np.float32)
    table = pa.table(
        {
            id_column: pa.array(rows[id_column]),
            output_column: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
            # Ray hands back an all-None object column as float NaN: keep only real messages.
            ERROR_COLUMN: pa.array([e if isinstance(e, str) else None for e in rows[ERROR_COLUMN]], pa.string()),
        }
    )

    def write(handle: Any) -> None:
        pq.write_table(table, handle)

    return write


def _embedded(table: Any, embedder: dict[str, Any], rows_per_call: int, actors: int, cpus_per_actor: int) -> Any:
    """``table`` mapped through :class:`RayEmbedder` actors, in input order (a lazy Ray dataset)."""
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # parts are consecutive input rows
    context.enable_progress_bars = False
    return ray.data.from_arrow(table).map_batches(
        RayEmbedder,
        fn_constructor_kwargs=embedder,
        batch_size=rows_per_call,
        batch_format="numpy",
        concurrency=actors,
        num_cpus=cpus_per_actor,
        # Ray Data restarts a dead actor and retries its task by default (max_restarts=-1, max_task_retries=-1):
        # a lost worker costs time, never rows.
    )


def _bad_rows(store: Any, id_column: str) -> list[tuple[Any, str]]:
    """Every (id, message) the finished parts hold, in part order."""
    import pyarrow.parquet as pq

    bad = []
    for number in sorted(store.done):
        part = pq.read_table(store.part_path(number), columns=[id_column, ERROR_COLUMN]).to_pylist()
        bad += [(row[id_column], row[ERROR_COLUMN]) for row in part if row[ERROR_COLUMN] is not None]
    return bad


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
    recipe: EmbedRecipe | None = None,
    variant: str | None = None,
    progress: Any = None,
    batching: Batching | None = None,
) -> dict[str, Any]:
    """Embed ``input_path`` on Ray into Parquet parts under ``output``; return a summary.

    Parts hold ``rows_per_part`` consecutive input rows each (id, embedding, error), written by the driver in input
    order into a :class:`bert_onnx.jobs.PartStore`: with ``resume``, a rerun checks the settings and parts and
    continues after the last finished part, so no row is written twice or lost. Bad rows (null, missing, non-string
    or invalid text, or too long with truncation off) are kept with a NaN vector and a message, and listed.
    ``recipe`` defaults to the folder's own; the fingerprint holds it, not ``batching``. The index records a finished
    run, so a later one to the same ``output`` is refused saying so. An ``output`` that is or holds the input is
    refused before any work.
    """
    import ray

    from bert_onnx.jobs import PartStore, check_apart, scan
    from bert_onnx.manifest import Manifest

    check_apart(input_path, output, output)
    manifest = Manifest.read(model_dir)
    recipe = folder_recipe(manifest.recipe, str(model_dir)) if recipe is None else recipe
    table = read_input(input_path, text_column, id_column)
    settings = {
        "input": str(input_path.resolve()),
        "input_sha256": scan(input_path)[0],
        "rows": table.num_rows,
        "model": str(Path(model_dir).resolve()),
        "model_files": manifest.files,  # every file, the tokenizer's and the recipe's weights among them
        "variant": variant,
        "text_column": text_column,
        "id_column": id_column,
        "rows_per_part": rows_per_part,
        **recipe.to_dict(),
    }
    store = PartStore.open(output, settings, ".parquet", resume)
    parts = (table.num_rows + rows_per_part - 1) // rows_per_part
    first = store.first_missing()
    if progress is not None:
        progress(min(first * rows_per_part, table.num_rows))
    if first < parts:
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
        embedder = {
            "model_dir": str(model_dir),
            "text_column": text_column,
            "recipe": recipe,
            "variant": variant,
            "batching": batching,
        }
        # Calls no bigger than a part, so parts are written as calls finish, not all at the end.
        calls = _embedded(table.slice(first * rows_per_part), embedder, rows_per_call or min(1024, rows_per_part),
                          actors, cpus_per_actor)  # fmt: skip
        # Batches of exactly rows_per_part rows (the last one shorter), in input order: one part each.
        for number, batch in enumerate(calls.iter_batches(batch_size=rows_per_part, batch_format="numpy"), first):
            rows = len(batch[id_column])
            store.add(number, rows, _parquet_writer(batch, id_column, "embedding"))
            if progress is not None:
                progress(rows)
    bad = _bad_rows(store, id_column)
    if store.rows != table.num_rows:
        raise IncompleteRunError(f"{output}: {store.rows} rows written for {table.num_rows} input rows")
    store.finish()
    return {"rows": store.rows, "parts": len(store.done), "bad_rows": bad}
