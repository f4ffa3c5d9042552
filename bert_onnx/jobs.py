"""Resumable embedding jobs: a corpus of any size, embedded in parts saved one by one, so nothing finished is lost.

A job writes consecutive parts of its input (``part-NNNNNN.npy`` chunks for ``bert-onnx embed``, ``.parquet`` parts
for Ray) into a folder with ``index.json``: the job's settings (model files, input checksum, the
:class:`~bert_onnx.runtime.recipe.EmbedRecipe`, ...) and each finished part's row count and SHA-256. Every file is
written atomically (temporary file, fsync, rename) and the index is updated only after its part is on disk, so a job
killed at any moment (Ctrl-C, ``kill -9``, power loss) leaves complete parts and an index that lists only complete
parts. Resuming checks the settings and every listed part's checksum, then does only what is missing; a part that
is missing or damaged is logged and done again. Part boundaries and batching depend only on the input and the
settings, so a resumed job writes the same bytes as an uninterrupted one.

    from bert_onnx.jobs import embed_file
    embed_file("model", "corpus.txt", "corpus.npy", resume=True)  # the folder's own recipe
    embed_file("model", "corpus.txt", "corpus.npy", EmbedRecipe(pooling="mean"), resume=True)

Progress and warnings go through :mod:`logging` (logger ``bert_onnx.jobs``) and an optional ``progress(n)`` callback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

import numpy as np

from bert_onnx import interface
from bert_onnx._files import atomic_write, atomic_write_text
from bert_onnx.errors import IncompleteRunError, InvalidValueError
from bert_onnx.manifest import sha256_file
from bert_onnx.runtime.recipe import Batching, EmbedRecipe

if TYPE_CHECKING:
    from bert_onnx.runtime.encoder import Encoder

log = logging.getLogger(__name__)

INDEX_FORMAT = "bert-onnx-parts"
INDEX_VERSION = 2
DEFAULT_CHUNK_SIZE = 10_000


class LineTooLongError(InvalidValueError):
    """A line of the input has more tokens than the recipe's ``max_length``, and truncation is off.

    ``length`` is the line's token count or, when ``at_least`` is true, that of a prefix already over ``max_length``
    (the tokenizer stops early on a long text: :class:`~bert_onnx.runtime.tokenizer.TextTooLongError`)."""

    def __init__(self, source: str, line: int, length: int, max_length: int, at_least: bool = False) -> None:
        self.source, self.line, self.length, self.max_length = source, line, length, max_length
        self.at_least = at_least
        super().__init__(
            f"{source}: line {line} is {self.tokens} tokens long, over max_length {max_length}; "
            "embed with truncation on to cut such lines"
        )

    @property
    def tokens(self) -> str:
        """The length for a message: ``"600"``, or ``"at least 600"``."""
        return f"at least {self.length}" if self.at_least else str(self.length)


class ResumeError(InvalidValueError):
    """A job's folder does not match this job, or cannot be resumed."""


def settings_changes(stored: dict[str, Any], settings: dict[str, Any]) -> str:
    """What differs between a job's recorded settings and this one's ("key: was X, now Y; ..."), or ""."""
    changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
    return "; ".join(f"{k}: was {stored.get(k)!r}, now {settings.get(k)!r}" for k in changed)


@dataclass
class PartStore:
    """A job's folder: its settings and finished parts, numbered from 0, each ``part-NNNNNN{suffix}``."""

    folder: Path
    settings: dict[str, Any]
    suffix: str
    done: dict[int, dict[str, Any]]
    complete: bool = False  # the job wrote every part (:meth:`finish`); its folder is its result

    @property
    def index_path(self) -> Path:
        return self.folder / "index.json"

    def part_path(self, number: int) -> Path:
        return self.folder / f"part-{number:06d}{self.suffix}"

    @property
    def rows(self) -> int:
        return sum(int(record["rows"]) for record in self.done.values())

    def first_missing(self) -> int:
        number = 0
        while number in self.done:
            number += 1
        return number

    def save(self) -> None:
        body = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "suffix": self.suffix,
            "settings": self.settings,
            "parts": {str(k): v for k, v in sorted(self.done.items())},
            "complete": self.complete,
        }
        atomic_write_text(self.index_path, json.dumps(body, indent=1, default=str) + "\n")

    def add(self, number: int, rows: int, write: Callable[[IO[bytes]], None]) -> None:
        """Write part ``number`` (``rows`` input rows) atomically with ``write(handle)``, then record it."""
        path = self.part_path(number)
        atomic_write(path, write)
        self.done[number] = {"file": path.name, "rows": int(rows), "sha256": sha256_file(path)}
        self.save()

    def finish(self) -> None:
        """Record that every part is written: a later run to this folder is told it holds a finished one."""
        self.complete = True
        self.save()

    @classmethod
    def open(
        cls, folder: Path, settings: dict[str, Any], suffix: str, resume: bool, resumable: bool = True
    ) -> PartStore:
        """A new store, or with ``resume`` the unfinished job's, checked against ``settings`` and its parts.

        A folder that exists and is not empty is never written to without ``resume``; an empty one is used. A job
        that cannot resume (``resumable=False``: its input is a stream) is told to delete such a folder."""
        folder = Path(folder)
        store = cls(folder, json.loads(json.dumps(settings, default=str)), suffix, {})
        if not folder.exists() or not any(folder.iterdir()):
            if resume:
                log.info("no unfinished run at %s; starting from the beginning", folder)
            folder.mkdir(parents=True, exist_ok=True)
            store.save()
            return store
        if not resume:
            raise ResumeError(cls._occupied(folder, resumable))
        for stale in folder.glob(".*.tmp"):  # temporaries of atomic writes that a kill cut short
            stale.unlink(missing_ok=True)
        try:
            body = json.loads(store.index_path.read_text())
            if body.get("format") != INDEX_FORMAT or body.get("version") != INDEX_VERSION:
                raise InvalidValueError(f"not a {INDEX_FORMAT} v{INDEX_VERSION} index")
            if body.get("suffix") != suffix:
                raise InvalidValueError(f"its parts are {body.get('suffix')} files, this job writes {suffix}")
            stored, done = body["settings"], {int(k): v for k, v in body["parts"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ResumeError(
                f"{store.index_path}: cannot resume from it ({exc}); delete {folder} to start over"
            ) from exc
        details = settings_changes(stored, store.settings)
        if details:
            raise ResumeError(
                f"{folder} was started with other settings ({details}); rerun with the same ones, "
                "or delete that folder to start over"
            )
        for number, record in sorted(done.items()):
            path = store.part_path(number)
            if path.is_file() and sha256_file(path) == record.get("sha256"):
                store.done[number] = record
            else:  # our writes never leave this; a damaged part is simply done again
                log.warning("%s is missing or damaged; embedding that part again", path)
        return store

    @staticmethod
    def _occupied(folder: Path, resumable: bool) -> str:
        """Why a job without ``resume`` will not write into ``folder``, which is not empty, and what to do."""
        try:
            body = json.loads((folder / "index.json").read_text())
            complete, parts = body.get("complete") is True, len(body["parts"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            complete, parts = False, 0
        if complete:
            return (
                f"{folder} holds a finished run ({parts} part(s)); to embed again, delete that folder or choose "
                "another output"
            )
        if not resumable:
            return (
                f"{folder} holds an unfinished run of this output (it is not empty), which a stream cannot resume; "
                "delete that folder to start over, or resume it (--resume) from the input file it was started from"
            )
        return (
            f"{folder} holds an unfinished run of this output (it is not empty); pass --resume (resume=True) "
            "to continue it, or delete that folder to start over"
        )

    @staticmethod
    def finished(folder: Path) -> int:
        """How many parts the index in ``folder`` lists (0 if there is none or it cannot be read)."""
        try:
            return len(json.loads((Path(folder) / "index.json").read_text())["parts"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0


# -- bert-onnx embed: lines of a text file -> one .npy ------------------------------------------------------------


def parts_dir(output: Path) -> Path:
    """Where ``embed_file`` keeps the parts of ``output`` while it runs."""
    return output.with_name(output.name + ".parts")


def scan(path: Path) -> tuple[str, int]:
    """SHA-256 and line count of a file, in one streaming pass."""
    digest, lines, last = hashlib.sha256(), 0, b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            lines += block.count(b"\n")
            last = block[-1:]
    return digest.hexdigest(), lines + (last != b"\n")


def read_lines(handle: BinaryIO | IO[bytes], source: str, digest: Any = None) -> Iterator[str]:
    """One text per line; only the line break (LF or CRLF) is removed, so empty lines stay as empty texts.

    ``digest`` (a hashlib object) is fed every byte read, to prove afterwards that the file did not change.
    """
    for number, line in enumerate(handle, start=1):
        if digest is not None:
            digest.update(line)
        try:
            yield line.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidValueError(f"{source}: line {number} is not valid UTF-8 ({exc.reason})") from exc


def chunks(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _npy_writer(vectors: np.ndarray) -> Callable[[IO[bytes]], None]:
    def write(handle: IO[bytes]) -> None:
        np.save(handle, vectors)

    return write


def _assemble(store: PartStore, count: int, dim: int, output: Path) -> None:
    """Stream every part, in order, into one ``(count, dim)`` float32 ``.npy`` at ``output``."""
    numbers = range(len(store.done))
    if sorted(store.done) != list(numbers) or store.rows != count:
        raise IncompleteRunError(f"{store.folder}: parts {sorted(store.done)} do not cover the {count} input lines")

    def write(handle: IO[bytes]) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
        np.lib.format.write_array_header_1_0(handle, {**header, "shape": (count, dim)})
        for number in numbers:
            part = np.load(store.part_path(number), mmap_mode="r")
            if part.dtype != np.float32 or part.ndim != 2 or part.shape[1] != dim:
                raise IncompleteRunError(
                    f"{store.part_path(number)}: shape {part.shape} {part.dtype} is not (n, {dim})"
                )
            handle.write(np.ascontiguousarray(part).tobytes())

    atomic_write(output, write)


def check_apart(source: Path, output: Path, folder: Path) -> None:
    """Refuse a job whose ``output`` is its input ``source``, or whose parts ``folder`` holds it: writing the result
    (or deleting the parts when done) would destroy the input."""
    if output.exists() and source.exists() and os.path.samefile(source, output):
        raise InvalidValueError(
            f"output {output} is the input file {source}: writing there would destroy the input; choose another output"
        )
    where = source.parent.resolve() / source.name  # the entry itself: a link in the folder would go with it
    if folder.resolve() in where.parents:
        raise InvalidValueError(
            f"the input {source} is inside {folder}, the folder this job writes its parts into; move the input or "
            "choose another output"
        )


def vector_settings(encoder: Encoder, recipe: EmbedRecipe) -> dict[str, Any]:
    """What decides a job's vectors, for its fingerprint: the files and way of running the model, and the recipe.
    Batching is left out: a text's vector does not depend on its batch."""
    files = encoder.manifest.files
    return {
        "model": str(encoder.model_dir.resolve()),
        "model_sha256": files[encoder.choice_spec.file],
        "tokenizer_sha256": files[interface.TOKENIZER_FILE],
        "recipe_weights_sha256": files.get(interface.RECIPE_WEIGHTS_FILE) if recipe.dense else None,
        "variant": encoder.variant,
        "device": encoder.device,
        "backend": encoder.backend,
        "precision": encoder.precision,
        **recipe.to_dict(),
    }


def _embed_chunk(
    encoder: Encoder,
    texts: list[str],
    recipe: EmbedRecipe,
    progress: Callable[[int], object] | None,
    batching: Batching | None,
    name: str,
    read: int,
) -> np.ndarray:
    """One chunk's vectors; a text refused is named by its line of ``name`` (``read`` lines came before)."""
    from bert_onnx.runtime.pooling import UnpooledTextError
    from bert_onnx.runtime.tokenizer import TextTooLongError

    try:
        return encoder.embed_recipe(texts, recipe, progress, batching=batching)
    except TextTooLongError as exc:
        line = read + exc.index + 1
        raise LineTooLongError(name, line, exc.length, exc.max_length, exc.at_least) from exc
    except UnpooledTextError as exc:  # named by its line of the input, not its place in the chunk
        where = f"{name}: line {read + exc.index + 1}"
        raise InvalidValueError(str(exc).replace(f"texts[{exc.index}]", where, 1)) from exc


def embed_file(
    encoder: Encoder | str | Path,
    source: str | Path | BinaryIO,
    output: str | Path,
    recipe: EmbedRecipe | None = None,
    *,
    batching: Batching | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    resume: bool = False,
    progress: Callable[[int], object] | None = None,
) -> tuple[int, int]:
    """Embed every line of ``source`` (a UTF-8 text file, or a binary stream such as stdin) into the float32
    ``.npy`` file ``output``, ``chunk_size`` lines at a time, each chunk saved as it finishes; return its shape.
    ``recipe`` defaults to the folder's own (``Encoder.default_recipe``); ``batching`` (batch size and token budget)
    changes speed and memory only, so a job may resume with another.

    With ``resume``, an unfinished job of the same ``output`` with the same settings continues where it stopped.
    On an error or an interrupt the finished parts are kept in :func:`parts_dir` (``output`` + ``.parts``), unless
    none finished, or the input is a stream: a stream cannot be read twice, so its job cannot resume and keeps no
    parts. A text over the recipe's ``max_length`` with ``truncation=False`` raises :class:`LineTooLongError` naming
    its line. An ``output`` that is ``source`` itself, or whose parts folder holds it, is refused before any work.
    """
    from bert_onnx.runtime.encoder import Encoder

    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise InvalidValueError(f"chunk_size={chunk_size!r} must be a positive number of lines")
    output = Path(output)
    path = Path(source) if isinstance(source, str | Path) else None
    name = "<stdin>" if path is None else str(path)
    if path is None and resume:
        raise InvalidValueError("resuming needs an input file: a stream cannot be read a second time")
    if path is not None:
        check_apart(path, output, parts_dir(output))
    input_sha256, count = (None, None) if path is None else scan(path)
    if not isinstance(encoder, Encoder):
        encoder = Encoder(encoder)
    recipe = encoder.default_recipe if recipe is None else recipe
    dim = encoder.dim(recipe)  # checks the recipe against the model before any work
    settings = vector_settings(encoder, recipe) | {
        "input": name if path is None else str(path.resolve()),
        "input_sha256": input_sha256,
        "lines": count,
        "chunk_size": chunk_size,  # where parts begin and end
        "dim": dim,
    }
    folder = parts_dir(output)
    store = PartStore.open(folder, settings, ".npy", resume, resumable=path is not None)
    digest = hashlib.sha256()
    tick = progress or (lambda n: None)
    read = 0
    try:
        opened = open(path, "rb") if path is not None else contextlib.nullcontext(cast(BinaryIO, source))  # noqa: SIM115
        with opened as handle:
            for number, texts in enumerate(chunks(read_lines(handle, name, digest), chunk_size)):
                if number in store.done:
                    if store.done[number]["rows"] != len(texts):
                        rows = store.done[number]["rows"]
                        raise ResumeError(f"{store.part_path(number)}: {rows} rows, the input's has {len(texts)}")
                    tick(len(texts))
                else:
                    vectors = _embed_chunk(encoder, texts, recipe, progress, batching, name, read)
                    store.add(number, len(texts), _npy_writer(vectors))
                read += len(texts)
        if count is not None and (read != count or digest.hexdigest() != input_sha256):
            raise IncompleteRunError(f"{name} changed while it was read; delete {folder} and run again")
    except BaseException:  # an error or an interrupt: keep what finished, if a rerun can resume from it
        if store.done and path is not None:
            log.info("%d finished part(s) are kept in %s", len(store.done), folder)
        else:  # nothing finished, or a stream, which cannot be read again to resume: nothing worth keeping
            if store.done:
                log.info("%d finished part(s) removed: a job reading %s cannot resume", len(store.done), name)
            shutil.rmtree(folder, ignore_errors=True)
        raise
    _assemble(store, read, dim, output)
    shutil.rmtree(folder, ignore_errors=True)
    return read, dim
