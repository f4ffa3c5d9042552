"""Finding the checkpoint to export: a local folder, the Hugging Face cache, or the hub, failing fast offline."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from bert_onnx.export.errors import ExportError

# What a BertModel export reads from a hub repository: config, weights (one format), tokenizer files.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
_LOCAL_HINT = (
    "Pass a local checkpoint folder instead (config.json, model weights and vocab.txt or tokenizer.json, as "
    "written by `save_pretrained`): bert-onnx export /path/to/checkpoint --output DIR"
)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    source: str  # hub id or absolute folder path, as recorded in the manifest
    revision: str | None  # hub commit hash where known


def resolve_checkpoint(model: str, revision: str | None = None, timeout: float = 5.0) -> Checkpoint:
    """Turn MODEL (a folder or a hub id) into a local folder holding the checkpoint.

    A hub id is served from the local Hugging Face cache when it is there; otherwise the hub is probed with a
    short ``timeout`` first, so an offline machine fails in seconds with a message saying why, instead of
    retrying with back-off inside ``from_pretrained``.
    """
    folder = Path(model).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise ExportError(f"{folder} is a file; MODEL must be a checkpoint folder or a hub id")
        if not (folder / "config.json").is_file():
            raise ExportError(f"{folder}: no config.json; not a transformers checkpoint folder")
        return Checkpoint(folder.resolve(), str(folder.resolve()), None)

    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError as exc:
        raise ExportError(f"{model!r} is neither an existing folder nor a valid hub id ({exc})") from exc

    try:
        cached = Path(snapshot_download(model, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        cached = None
    if cached is not None and _complete(cached):
        return Checkpoint(cached, model, cached.name)

    where = f"the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        raise ExportError(f"{model!r} is not in {where} and HF_HUB_OFFLINE is set. {_LOCAL_HINT}")
    reachable, reason = _hub_reachable(constants.ENDPOINT, timeout)
    if not reachable:
        raise ExportError(
            f"{model!r} is not in {where}, and the hub at {constants.ENDPOINT} cannot be reached ({reason}); "
            f"this machine looks offline. {_LOCAL_HINT}"
        )
    try:
        weights = _weights_file(model, revision)
        path = Path(
            snapshot_download(model, revision=revision, allow_patterns=["config.json", weights, *_TOKENIZER_FILES])
        )
    except Exception as exc:  # hub errors: missing repo, gated, network dropped mid-download
        raise ExportError(f"downloading {model!r} from {constants.ENDPOINT} failed: {exc}. {_LOCAL_HINT}") from exc
    return Checkpoint(path, model, path.name)


def _complete(folder: Path) -> bool:
    has_weights = any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin"))
    return (folder / "config.json").is_file() and has_weights


def _weights_file(model: str, revision: str | None) -> str:
    """Prefer safetensors (no pickle); fall back to pytorch_model.bin, loaded with weights_only."""
    from huggingface_hub import list_repo_files

    files = set(list_repo_files(model, revision=revision))
    for name in ("model.safetensors", "pytorch_model.bin"):
        if name in files:
            return name
    raise ExportError(f"{model!r} has neither model.safetensors nor pytorch_model.bin")


def _hub_reachable(endpoint: str, timeout: float) -> tuple[bool, str]:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds, DNS lookup included."""
    url = urlparse(endpoint)
    host = url.hostname or endpoint
    port = url.port or (443 if url.scheme == "https" else 80)
    outcome: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append((True, ""))
        except OSError as exc:
            outcome.append((False, f"{type(exc).__name__}: {exc or 'timed out'}"))

    # A thread, because the socket timeout does not bound the resolver: a dead DNS server can stall far longer.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else (False, f"no answer within {timeout:g} s")
