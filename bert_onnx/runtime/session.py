"""ONNX Runtime session setup: one place that picks the execution provider and proves it got it.

ONNX Runtime rewrites a graph at every load (constant folding, fusions). With a ``cache_dir`` the rewritten graph is
saved once, keyed by the source file's SHA-256, the device and the ONNX Runtime version, and later loads start from
it with the rewrites that are already done switched off. With ONNX Runtime 1.32 the rewriting is a small part of a
load (bert-base: 0.40 s to create a session from ``model.onnx``, 0.35 s from the saved graph), so ``Encoder`` keeps
the cache off unless asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import IO

import onnxruntime as ort

from bert_onnx import machine
from bert_onnx._files import atomic_write, atomic_write_text
from bert_onnx.errors import BertOnnxError, InvalidValueError
from bert_onnx.manifest import ModelFolderError, sha256_file

DEVICES: dict[str, str] = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
CACHE_ENV = "BERT_ONNX_SESSION_CACHE"


class ProviderError(BertOnnxError, RuntimeError):
    """The requested device's execution provider is not available, or the session did not use it."""


def default_cache_dir() -> Path:
    """``$BERT_ONNX_SESSION_CACHE``, else ``$XDG_CACHE_HOME/bert-onnx/sessions`` (``~/.cache/...``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bert-onnx" / "sessions"


def _options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's provider-assignment warnings are noise for users
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def _cached_graph(cache_dir: Path, model_sha256: str, device: str) -> tuple[Path, Path]:
    stem = f"{model_sha256[:40]}-{device}-ort{ort.__version__}"
    return cache_dir / f"{stem}.onnx", cache_dir / f"{stem}.sha256"


def _load_cached(graph: Path, digest: Path) -> bool:
    """Whether a complete, unmodified cached graph is there (its own SHA-256 recorded beside it)."""
    try:
        return graph.is_file() and digest.read_text().strip() == sha256_file(graph)
    except OSError:
        return False


def create_session(
    model_path: str | Path,
    device: str = "cpu",
    threads: int | None = None,
    cache_dir: Path | None = None,
    model_sha256: str | None = None,
) -> ort.InferenceSession:
    """An InferenceSession on ``device`` ("cpu" or "cuda"), never silently on another device.

    ``threads`` sets ONNX Runtime's intra-op threads (checked by :func:`bert_onnx.machine.check_threads`); ``None``
    keeps its default (one per physical core).
    ``cache_dir`` with ``model_sha256`` (the verified SHA-256 of ``model_path``) enables the optimized-graph cache.
    """
    if device not in DEVICES:
        raise InvalidValueError(f"device={device!r} is not one of {', '.join(DEVICES)}")
    threads = machine.check_threads(threads)
    provider = DEVICES[device]
    available = ort.get_available_providers()
    if provider not in available:
        raise ProviderError(
            f"device={device!r} needs {provider}, which this onnxruntime does not offer "
            f"(available: {', '.join(available)}). For CUDA install onnxruntime-gpu in place of onnxruntime: "
            "pip uninstall -y onnxruntime && pip install 'bert-onnx[gpu]'"
        )
    # CPU stays listed after CUDA for the few shape ops ORT places there by design; the check below still refuses a
    # session whose first provider is not CUDA, i.e. one where CUDA failed to initialise.
    # TF32 off: PyTorch's fp32 matmuls do not use it by default either, and it costs ~1e-3 of parity.
    providers = [provider] if device == "cpu" else [(provider, {"use_tf32": "0"}), DEVICES["cpu"]]
    path = Path(model_path)
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing model file")
    if cache_dir is not None and model_sha256 is not None:
        session = _cached_session(path, providers, threads, Path(cache_dir), model_sha256, device)
    else:
        session = _session(path, _options(threads), providers)
    used = session.get_providers()
    if not used or used[0] != provider:
        raise ProviderError(
            f"device={device!r} asked for {provider} but the session runs on {used} "
            f"(available: {', '.join(available)}); refusing to fall back silently. "
            "Check the CUDA and cuDNN libraries that onnxruntime-gpu needs."
        )
    return session


def _graph_failures() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's exception types for a file it cannot read as a graph (as opposed to a provider that fails
    to start or runs out of memory, e.g. ``RuntimeException``/``EPFail`` on CUDA)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidProtobuf", "InvalidGraph", "NoSuchFile", "NoModel", "InvalidArgument", "NotImplemented")
    return tuple(getattr(state, name) for name in names if hasattr(state, name))


def _session(path: Path, options: ort.SessionOptions, providers: list) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except _graph_failures() as exc:
        raise ModelFolderError(f"{path}: ONNX Runtime cannot load this model ({exc})") from exc
    except Exception as exc:  # the provider failed: out of device memory, a missing CUDA library, ...
        names = [p if isinstance(p, str) else p[0] for p in providers]
        raise ProviderError(f"{path}: ONNX Runtime could not start a session on {', '.join(names)}: {exc}") from exc


def _cached_session(
    path: Path, providers: list, threads: int | None, cache_dir: Path, model_sha256: str, device: str
) -> ort.InferenceSession:
    graph, digest = _cached_graph(cache_dir, model_sha256, device)
    if _load_cached(graph, digest):
        options = _options(threads)
        # Only the hardware-specific rewrites are left to do; the extended ones are already in the saved graph.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        with contextlib.suppress(ModelFolderError):  # an unreadable cache entry is rebuilt below
            return _session(graph, options, providers)
    options = _options(threads)
    # Saved at the extended level: ORT_ENABLE_ALL adds layout rewrites tied to this exact CPU.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # A name of its own (not just the pid): two threads of one process may fill the cache at once.
        handle, name = tempfile.mkstemp(prefix=f".{graph.name}.", suffix=".tmp", dir=cache_dir)
        os.close(handle)
        staged = Path(name)
        options.optimized_model_filepath = str(staged)
    except OSError as exc:
        message = f"bert-onnx: cannot write the session cache in {cache_dir} ({exc}); loading without it"
        warnings.warn(message, stacklevel=4)
        return _session(path, _options(threads), providers)
    try:
        session = _session(path, options, providers)
        if staged.is_file() and staged.stat().st_size > 0:  # ONNX Runtime wrote it
            _install(staged, graph, digest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    # The session that wrote the cache ran at the extended level only; load the full-level one the next time.
    return session


def _install(staged: Path, graph: Path, digest: Path) -> None:
    """Put the graph ONNX Runtime wrote at ``staged`` in place as ``graph`` through the package's atomic write
    (copied, fsynced, renamed: ONNX Runtime writes to a path, not into a file we can fsync before the rename), then
    its SHA-256, hashed while copying, as ``digest``: a crash leaves the old entry, or a graph whose digest is
    missing or stale, which :func:`_load_cached` refuses and the next load rebuilds."""
    sha = hashlib.sha256()

    def copy(target: IO[bytes]) -> None:
        with staged.open("rb") as source:
            while chunk := source.read(1 << 20):
                sha.update(chunk)
                target.write(chunk)

    atomic_write(graph, copy)
    atomic_write_text(digest, sha.hexdigest() + "\n")
