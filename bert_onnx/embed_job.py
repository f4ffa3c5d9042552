"""``bert-onnx embed`` over a file of any size: streamed in chunks, each saved as it finishes, resumable.

While a run is going, ``OUT.npy.parts/`` holds one ``chunk-NNNNNN.npy`` per finished chunk of ``chunk_size`` lines
and ``index.json``: the run's settings (model file, input file's SHA-256, pooling, ...) and each finished chunk's
row count and SHA-256. Every file there is written atomically (temporary file, fsync, rename) and the index is
updated only after its chunk is on disk, so a run killed at any moment (Ctrl-C, ``kill -9``, power loss) leaves
complete chunks and an index that lists only complete chunks. ``--resume`` checks the settings and each listed
chunk's checksum, then embeds only what is missing. When every chunk is there, they are streamed into ``OUT.npy``
(again through a temporary file and a rename) and the parts folder is removed. Chunk boundaries and batching depend
only on the input and the settings, so a resumed run writes the same bytes as an uninterrupted one.

Memory stays bounded by one chunk of texts and its embeddings, whatever the input's size.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from bert_onnx._files import atomic_write, atomic_write_text
from bert_onnx.manifest import sha256_file

INDEX_FORMAT = "bert-onnx-embed-parts"
INDEX_VERSION = 1
DEFAULT_CHUNK_SIZE = 10_000


class ResumeError(ValueError):
    """An unfinished run's parts folder does not match this run, or cannot be resumed."""


def parts_dir(output: Path) -> Path:
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
            raise ValueError(f"{source}: line {number} is not valid UTF-8 ({exc.reason})") from exc


def chunks(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def settings_changes(stored: dict[str, Any], settings: dict[str, Any]) -> str:
    """What differs between a run's recorded settings and this one's ("key: was X, now Y; ..."), or ""."""
    changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
    return "; ".join(f"{k}: was {stored.get(k)!r}, now {settings.get(k)!r}" for k in changed)


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of atomic writes that a kill cut short."""
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


@dataclass
class PartsIndex:
    """``index.json`` of a parts folder: the settings a run was started with and its finished chunks."""

    folder: Path
    settings: dict[str, Any]
    done: dict[int, dict[str, Any]]

    @property
    def path(self) -> Path:
        return self.folder / "index.json"

    def chunk_path(self, number: int) -> Path:
        return self.folder / f"chunk-{number:06d}.npy"

    def save(self) -> None:
        body = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "settings": self.settings,
            "chunks": {str(k): v for k, v in sorted(self.done.items())},
        }
        atomic_write_text(self.path, json.dumps(body, indent=1) + "\n")

    def add(self, number: int, vectors: np.ndarray) -> None:
        path = self.chunk_path(number)
        atomic_write(path, lambda handle: np.save(handle, vectors))
        self.done[number] = {"file": path.name, "rows": int(vectors.shape[0]), "sha256": sha256_file(path)}
        self.save()

    @classmethod
    def open(cls, folder: Path, settings: dict[str, Any], resume: bool) -> PartsIndex:
        """A fresh index, or with ``resume`` the unfinished run's, checked against ``settings`` and its chunks."""
        index = cls(folder, settings, {})
        if not folder.exists():
            if resume:
                print(f"bert-onnx: no unfinished run at {folder}; starting from the beginning", file=sys.stderr)
            folder.mkdir()
            index.save()
            return index
        if not resume:
            raise ResumeError(
                f"{folder} holds an unfinished run of this output; pass --resume to continue it, "
                "or delete that folder to start over"
            )
        remove_stale_temporaries(folder)
        try:
            body = json.loads(index.path.read_text())
            if body.get("format") != INDEX_FORMAT or body.get("version") != INDEX_VERSION:
                raise ValueError(f"not a {INDEX_FORMAT} v{INDEX_VERSION} index")
            stored, done = body["settings"], {int(k): v for k, v in body["chunks"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ResumeError(f"{index.path}: cannot resume from it ({exc}); delete {folder} to start over") from exc
        details = settings_changes(stored, settings)
        if details:
            raise ResumeError(
                f"{folder} was started with other settings ({details}); rerun with the same ones, "
                "or delete that folder to start over"
            )
        for number, record in sorted(done.items()):
            path = index.chunk_path(number)
            if path.is_file() and sha256_file(path) == record.get("sha256"):
                index.done[number] = record
            else:  # cannot happen through our writes; a damaged chunk is simply embedded again
                print(f"bert-onnx: {path} is missing or damaged; embedding that chunk again", file=sys.stderr)
        return index


def assemble(index: PartsIndex, count: int, output: Path) -> tuple[int, int]:
    """Stream every chunk, in order, into one ``(count, dim)`` float32 ``.npy`` at ``output``; return its shape."""
    numbers = range(len(index.done))
    if sorted(index.done) != list(numbers) or sum(r["rows"] for r in index.done.values()) != count:
        raise RuntimeError(f"{index.folder}: chunks {sorted(index.done)} do not cover the {count} input lines")
    dim = int(index.settings["dim"])

    def write(handle: IO[bytes]) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
        np.lib.format.write_array_header_1_0(handle, {**header, "shape": (count, dim)})
        for number in numbers:
            part = np.load(index.chunk_path(number), mmap_mode="r")
            if part.dtype != np.float32 or part.ndim != 2 or part.shape[1] != dim:
                raise RuntimeError(f"{index.chunk_path(number)}: shape {part.shape} {part.dtype} is not (n, {dim})")
            handle.write(np.ascontiguousarray(part).tobytes())

    atomic_write(output, write)
    shutil.rmtree(index.folder, ignore_errors=True)
    return count, dim


def run(
    embed: Callable[[list[str]], np.ndarray],
    lines: Iterator[str],
    count: int | None,
    index: PartsIndex,
    chunk_size: int,
    progress: Callable[[int], object],
    on_error: Callable[[Exception, int], Exception],
) -> int:
    """Embed every chunk not yet in ``index``, saving each; return the number of lines read.

    ``on_error(exc, first_line)`` turns an error inside a chunk into the one to raise (adding the line number).
    """
    read = 0
    for number, texts in enumerate(chunks(lines, chunk_size)):
        if number in index.done:
            if index.done[number]["rows"] != len(texts):
                rows = index.done[number]["rows"]
                raise ResumeError(f"{index.chunk_path(number)}: {rows} rows, the input's chunk has {len(texts)}")
            progress(len(texts))
        else:
            try:
                vectors = embed(texts)
            except Exception as exc:
                raise on_error(exc, read) from exc
            index.add(number, vectors)
        read += len(texts)
    if count is not None and read != count:
        raise RuntimeError(f"the input changed while it was read: {read} lines, {count} when the run started")
    return read
