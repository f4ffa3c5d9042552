"""Tuned profiles: which way of running a model folder measured fastest on this machine, as ``bert-onnx tune`` found.

Which choice is fastest (ONNX Runtime fp32, opt or int8; OpenVINO fp32 or bf16) depends on the CPU's instruction
sets, its core count and the library versions, so ``Encoder(DIR)`` picks by measurement, never by assumption: the
fastest choice that passed its accuracy gate *here*, when a profile for this machine exists, else fp32. "Fastest"
is what the profile was tuned for (:data:`OBJECTIVES`): throughput on real paragraphs (the default) or the latency
of one short text (``bert-onnx tune --for latency``).

Where profiles live: in the user's cache (``$BERT_ONNX_PROFILE_DIR``, else ``$XDG_CACHE_HOME/bert-onnx/profiles``,
else ``~/.cache/bert-onnx/profiles``), one JSON file per model, not in the model folder. A model folder is written
once, checksummed, and often shared by machines of different CPUs (a network drive, a container image) or mounted
read-only; a measurement belongs to the machine that made it. The file is named by the SHA-256 of the folder's
recorded checksums, so copies of a folder share a profile and a re-export starts without one. It holds one entry
per machine (CPU model, instruction sets, core count, device, threads); an entry made with other library versions,
or on another machine, is ignored with a note saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bert_onnx import __version__, choices, machine
from bert_onnx._files import atomic_write_text
from bert_onnx.choices import Choice
from bert_onnx.manifest import Manifest

PROFILE_ENV = "BERT_ONNX_PROFILE_DIR"
PROFILE_FORMAT = "bert-onnx-profile"
PROFILE_VERSION = 1

log = logging.getLogger(__name__)


def default_profile_dir() -> Path:
    if os.environ.get(PROFILE_ENV):
        return Path(os.environ[PROFILE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bert-onnx" / "profiles"


def profile_path(manifest: Manifest, profile_dir: Path | None = None) -> Path:
    """The profile file of the model ``manifest`` describes: named by the SHA-256 of its recorded checksums."""
    files = json.dumps(sorted(manifest.files.items())).encode("utf-8")
    return (profile_dir or default_profile_dir()) / f"{hashlib.sha256(files).hexdigest()[:24]}.json"


def machine_key(device: str, threads: int | None) -> dict[str, Any]:
    """What a measurement depends on besides the libraries: CPU model, instruction sets, cores, device, threads."""
    described = machine.describe()
    return {
        "cpu": described["cpu"],
        "cpus": described["cpus"],
        "isa": described["isa"],
        "device": device,
        "threads": threads,
    }


def library_versions() -> dict[str, str | None]:
    """bert-onnx, ONNX Runtime (the module imported, CPU or GPU build) and OpenVINO (``None``: not installed; read
    from its package metadata, without importing it) versions."""
    import onnxruntime

    openvino = machine.installed_versions(["openvino"]).get("openvino")
    return {"bert-onnx": __version__, "onnxruntime": onnxruntime.__version__, "openvino": openvino}


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The entries of the profile at ``path``; none if it is missing. An unreadable file is reported and ignored
    (``tune`` rewrites it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("ignoring the unreadable tuned profile %s (%s); run `bert-onnx tune` again", path, exc)
        return []
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT or data.get("version") != PROFILE_VERSION:
        log.warning("ignoring %s: not a version-%d bert-onnx profile", path, PROFILE_VERSION)
        return []
    entries = data.get("entries")
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def save_entry(manifest: Manifest, model_dir: Path, entry: Mapping[str, Any], profile_dir: Path | None = None) -> Path:
    """Add ``entry`` to the model's profile, replacing the one of the same machine; atomic. Returns the path."""
    path = profile_path(manifest, profile_dir)
    kept = [e for e in read_entries(path) if e.get("machine") != entry["machine"]]
    body = {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "model": str(Path(model_dir).resolve()),
        "entries": [*kept, dict(entry)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(body, indent=2) + "\n")
    return path


THROUGHPUT, LATENCY = "throughput", "latency"
# What "fastest" means, and the measurement of a profile's choice that says it: texts/s on length-sorted batches
# of real paragraphs (embedding a corpus; the default), or the time of one short text (a service answering one
# query at a time). Which choice wins differs: on an AMX Xeon, OpenVINO bf16 for throughput, int8 for one text.
OBJECTIVES: Mapping[str, str] = {THROUGHPUT: "texts_per_second", LATENCY: "one_text_ms"}


@dataclass(frozen=True)
class Pick:
    """What ``Encoder`` runs and why: a choice name (``None``: the backend's default, fp32), the reason in words,
    and whether this machine's tuned profile picked it."""

    name: str | None
    reason: str
    tuned: bool = False


def _differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    changed = [key for key in current if stored.get(key) != current.get(key)]
    return ", ".join(f"{key} {stored.get(key)!r}, here {current.get(key)!r}" for key in changed)


def lookup(
    manifest: Manifest,
    device: str,
    threads: int | None,
    allowed: Callable[[Choice], bool] = lambda choice: True,
    profile_dir: Path | None = None,
) -> Pick:
    """The fastest choice, among ``allowed`` ones, that passed its gate when this machine was tuned with these
    library versions; or ``Pick(None, why)`` when no such measurement exists (a stale one is logged)."""
    path = profile_path(manifest, profile_dir)
    entries = read_entries(path)
    key, versions = machine_key(device, threads), library_versions()
    hint = "run `bert-onnx tune DIR` to measure the choices here"
    same_machine = [e for e in entries if e.get("machine") == key]
    if not same_machine:
        if entries:
            other = _differences(entries[-1].get("machine", {}), key)
            note = f"the tuned profile {path} was measured on another machine or setting ({other})"
            log.warning("ignoring %s", note)
            return Pick(None, f"default (ignored {note}; {hint})")
        return Pick(None, f"default (no tuned profile for this machine; {hint})")
    entry = same_machine[-1]
    if entry.get("versions") != versions:
        other = _differences(entry.get("versions", {}), versions)
        note = f"the tuned profile {path} was measured with other library versions ({other})"
        log.warning("ignoring %s", note)
        return Pick(None, f"default (ignored {note}; {hint})")
    objective = entry.get("objective", THROUGHPUT)
    measure = OBJECTIVES.get(objective)
    if measure is None:
        return Pick(
            None, f"default (the profile {path} was tuned for {objective!r}, not one of {', '.join(OBJECTIVES)})"
        )
    passed = [
        c
        for c in entry.get("choices", [])
        if isinstance(c, dict)
        and c.get("passed")
        and c.get("name") in choices.CHOICES
        and allowed(choices.CHOICES[c["name"]])
        and isinstance(c.get(measure), (int, float))
    ]
    if not passed:
        return Pick(
            None, f"default (the profile tuned here on {entry.get('created')} has no passing choice for this backend)"
        )
    if objective == THROUGHPUT:
        best = max(passed, key=lambda c: c[measure])
        measured = f"{best[measure]:.1f} texts/s on real text"
    else:
        best = min(passed, key=lambda c: c[measure])
        measured = f"{best[measure]:.2f} ms for one short text"
    return Pick(
        best["name"],
        f"tuned here on {entry.get('created')} for {objective}: the fastest choice that passed its gate here "
        f"({measured})",
        tuned=True,
    )
