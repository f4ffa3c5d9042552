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
per machine (CPU model, instruction sets, the CPUs this process may use, device, threads); an entry made with other
library versions, or on another machine, is ignored with a note saying why, and so is an entry that is not a
well-formed one (hand-edited, damaged). ``tune`` runs at the same time on one machine (several thread settings)
take turns at the file under a lock, so none loses another's entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
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
    """What a measurement depends on besides the libraries: CPU model, instruction sets, the CPUs this process may
    use (:func:`bert_onnx.machine.usable_cpus`: a profile tuned on more is not trusted under ``taskset`` or a
    container's quota), device, threads."""
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


def _problem(entry: object) -> str | None:
    """Why ``entry`` is not a well-formed profile entry, or ``None``."""
    if not isinstance(entry, dict):
        return f"it is {type(entry).__name__}, not an object"
    for key, kind in (("machine", dict), ("versions", dict), ("choices", list)):
        if not isinstance(entry.get(key), kind):
            return f"its {key!r} is {entry.get(key)!r:.40}, not {'an object' if kind is dict else 'a list'}"
    for key in ("created", "objective"):
        if key in entry and not isinstance(entry[key], str):
            return f"its {key!r} is {entry[key]!r:.40}, not a string"
    for index, choice in enumerate(entry["choices"]):
        if not isinstance(choice, dict) or not isinstance(choice.get("name"), str):
            return f"choices[{index}] is {choice!r:.40}, not a choice with a name"
        if not isinstance(choice.get("passed"), bool):
            return f"choices[{index}] ({choice['name']}) has passed={choice.get('passed')!r:.40}, not true or false"
        if choice["passed"] and choice.get("skipped") is not None:
            return f"choices[{index}] ({choice['name']}) is marked both passed and skipped"
        for measure in OBJECTIVES.values():
            value = choice.get(measure)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not (number and math.isfinite(value) and value >= 0):
                return f"choices[{index}] ({choice['name']}) has {measure}={value!r:.40}, not a finite number"
    return None


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The well-formed entries of the profile at ``path``; none if it is missing. An unreadable file, and each
    malformed entry, is reported and ignored (``tune`` rewrites it)."""
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
    if not isinstance(entries, list):
        log.warning("ignoring %s: its entries are %r, not a list; run `bert-onnx tune` again", path, entries)
        return []
    kept = []
    for index, entry in enumerate(entries):
        why = _problem(entry)
        if why is None:
            kept.append(entry)
        else:
            log.warning("ignoring entry %d of the tuned profile %s: %s; run `bert-onnx tune` again", index, path, why)
    return kept


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a lock file beside a profile, created if missing, never removed: a file
    removed while another process waits on it would let a third one lock a new file). POSIX ``flock``; where there
    is none (Windows), no lock, and ``tune`` runs at the same time may lose each other's entries."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with path.open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes, a crash included
        yield


def save_entry(manifest: Manifest, model_dir: Path, entry: Mapping[str, Any], profile_dir: Path | None = None) -> Path:
    """Add ``entry`` to the model's profile, replacing the one of the same machine; atomic, and under a lock on a
    ``.lock`` file beside it, so concurrent ``tune`` runs keep each other's entries. Returns the path."""
    path = profile_path(manifest, profile_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name(path.name + ".lock")):  # the read, the merge and the write, as one step
        kept = [e for e in read_entries(path) if e.get("machine") != entry["machine"]]
        body = {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "model": str(Path(model_dir).resolve()),
            "entries": [*kept, dict(entry)],
        }
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


def _measured(choice: Mapping[str, Any], objective: str) -> str:
    if objective == THROUGHPUT:
        return f"{choice[OBJECTIVES[objective]]:.1f} texts/s on real text"
    return f"{choice[OBJECTIVES[objective]]:.2f} ms for one short text"


def lookup(
    manifest: Manifest,
    device: str,
    threads: int | None,
    passed_over: Callable[[Choice], str | None] = lambda choice: None,
    profile_dir: Path | None = None,
) -> Pick:
    """The fastest choice that passed its gate when this machine was tuned with these library versions, among those
    ``passed_over`` finds no reason to skip (the caller's: another backend was asked for, or the backend does not
    take the options given); or ``Pick(None, why)`` when no such measurement exists (a stale one is logged). When a
    faster choice was passed over, the reason says which and why."""
    path = profile_path(manifest, profile_dir)
    entries = read_entries(path)
    key, versions = machine_key(device, threads), library_versions()
    hint = "run `bert-onnx tune DIR` to measure the choices here"
    same_machine = [e for e in entries if e["machine"] == key]
    if not same_machine:
        if entries:
            other = _differences(entries[-1]["machine"], key)
            note = f"the tuned profile {path} was measured on another machine or setting ({other})"
            log.warning("ignoring %s", note)
            return Pick(None, f"default (ignored {note}; {hint})")
        return Pick(None, f"default (no tuned profile for this machine; {hint})")
    entry = same_machine[-1]
    if entry["versions"] != versions:
        other = _differences(entry["versions"], versions)
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
        for c in entry["choices"]
        if c["passed"] and c["name"] in choices.CHOICES and isinstance(c.get(measure), (int, float))
    ]
    if objective == THROUGHPUT:
        passed.sort(key=lambda c: -c[measure])
    else:
        passed.sort(key=lambda c: c[measure])
    why_not = {c["name"]: passed_over(choices.CHOICES[c["name"]]) for c in passed}
    fitting = [c for c in passed if why_not[c["name"]] is None]
    created = entry.get("created")
    if not fitting:
        over = "; ".join(f"{name}: {why}" for name, why in why_not.items())
        fits = f" that fits the keywords given (passed over {over})" if over else ""
        return Pick(None, f"default (the profile tuned here on {created} has no passing choice{fits})")
    best = fitting[0]
    note = "".join(
        f"; {c['name']} measured faster ({_measured(c, objective)}) but was passed over: {why_not[c['name']]}"
        for c in passed[: passed.index(best)]
    )
    return Pick(
        best["name"],
        f"tuned here on {created} for {objective}: the fastest choice that passed its gate here"
        f"{' and fits the keywords given' if note else ''} ({_measured(best, objective)}){note}",
        tuned=True,
    )
