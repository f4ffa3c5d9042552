"""``bert-onnx verify`` and ``bert-onnx tune``: every way of running a folder that works here, checked against the
PyTorch references stored at export (:mod:`bert_onnx.gates`), and timed.

A *choice* is one way to run the folder: a stored graph under ONNX Runtime ("fp32", "opt", "int8", "fp16") or
``model.onnx`` compiled by OpenVINO ("openvino-fp32", "openvino-bf16"). ``verify`` measures each choice's export
gate on this machine; ``tune`` does the same, times the choices that pass on real text, and saves the result as
this machine's profile (:mod:`bert_onnx.runtime.profile`), which ``Encoder(DIR)`` then follows. A choice that
cannot run here (OpenVINO not installed, bf16 without bf16 units, signed 8-bit (s8) int8 weights without VNNI, CUDA-only
graphs on the CPU) is listed as skipped, with the reason. Imports neither torch nor transformers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bert_onnx import choices, gates, interface, machine, timing
from bert_onnx.errors import InvalidValueError
from bert_onnx.gates import References
from bert_onnx.manifest import Manifest, ModelFolderError, VariantRecord
from bert_onnx.runtime import backends, profile
from bert_onnx.runtime.encoder import Encoder
from bert_onnx.runtime.recipe import EmbedRecipe

# What tune times: embed's fixed default recipe, not the folder's (which may ask for a recipe when not understood):
# which choice is fastest does not depend on the pooling.
TIMING_RECIPE = EmbedRecipe()

Progress = Callable[[str], object]  # called once per step, with what the step is
SHORT_TEXT = "I love Korea"  # the one-text latency
MIN_TIMING_SECONDS = 0.3  # each timed measurement repeats its texts until it lasts at least this long
SHORT_TEXT_ROUNDS = 5
SHORT_TEXT_MIN_SECONDS = MIN_TIMING_SECONDS / 8  # one short text is cheap to time: its rounds are shorter


@dataclass(frozen=True)
class Outcome:
    """One choice here: skipped (with the reason), or its gate measured here, and, after ``tune``, its speed."""

    name: str
    skipped: str | None = None
    record: VariantRecord | None = None
    texts_per_second: float | None = None
    one_text_ms: float | None = None

    @property
    def passed(self) -> bool:
        return self.record is not None and self.record.passed

    @property
    def status(self) -> str:
        if self.skipped is not None:
            return "skipped"
        return "ok" if self.passed else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "passed": self.passed,
            "skipped": self.skipped,
            "gate": None if self.record is None else dataclasses.asdict(self.record),
            "texts_per_second": self.texts_per_second,
            "one_text_ms": self.one_text_ms,
        }


def candidates(manifest: Manifest, device: str) -> list[tuple[str, str | None]]:
    """Every choice for ``device`` with the reason it cannot run here, or ``None`` if it can; a choice with a file
    of its own only where the folder holds it."""
    return [
        (choice.name, backends.backend_of(choice).unavailable(choice, device, manifest))
        for choice in choices.CHOICES.values()
        if choice.name in manifest.variants or not choice.own_file
    ]


def open_choice(
    model_dir: Path, name: str, device: str = "cpu", threads: int | None = None, verify: bool = True
) -> Encoder:
    """An ``Encoder`` running choice ``name`` (``verify=False``: its files' checksums were just checked)."""
    with warnings.catch_warnings():
        # A choice's gate may not have been run at export (OpenVINO's); verify and tune measure it here.
        warnings.filterwarnings("ignore", message=r".*was not validated for .* at export")
        keywords = choices.get(name).keywords
        return Encoder(
            model_dir,
            device=device,
            threads=threads,
            verify=verify,
            backend=keywords.get("backend"),
            variant=keywords.get("variant"),
            precision=keywords.get("precision"),
        )


def load_references(model_dir: Path, manifest: Manifest) -> References:
    """The folder's stored gate references, after checking every file the manifest lists."""
    if interface.GATES_FILE not in manifest.files:
        raise ModelFolderError(
            f"{model_dir}: no {interface.GATES_FILE} (the folder was exported by a bert-onnx that did not store the "
            "gates' PyTorch references); export it again to verify or tune it"
        )
    manifest.verify_files(model_dir)
    return References.load(model_dir / interface.GATES_FILE)


def check_gate(name: str, encoder: Encoder, references: References) -> VariantRecord:
    """Choice ``name``'s export gate, measured on ``encoder`` here against the stored references."""
    choice = choices.get(name)
    checks = gates.measure(choice.gate, references, encoder.runner.run, encoder.tokenizer, encoder.max_length)
    return VariantRecord(
        file=choice.file,
        devices=choice.devices,
        gate=gates.describe(choice, references, encoder.max_length),
        checks=checks,
        measured_on={**machine.describe(), **{k: v for k, v in profile.library_versions().items() if v}},
    )


def _gated(
    model_dir: Path, device: str, threads: int | None, progress: Progress | None
) -> tuple[Manifest, References, list[Outcome], dict[str, Encoder]]:
    model_dir = Path(model_dir)
    manifest = Manifest.read(model_dir)
    references = load_references(model_dir, manifest)
    outcomes, passing = [], {}
    for name, reason in candidates(manifest, device):
        if progress is not None:
            progress(f"{name}: gate")
        if reason is not None:
            outcomes.append(Outcome(name, skipped=reason))
            continue
        encoder = open_choice(model_dir, name, device, threads, verify=False)  # load_references checked them all
        outcome = Outcome(name, record=check_gate(name, encoder, references))
        outcomes.append(outcome)
        if outcome.passed:
            passing[name] = encoder
    return manifest, references, outcomes, passing


def verify(
    model_dir: str | Path, device: str = "cpu", threads: int | None = None, progress: Progress | None = None
) -> list[Outcome]:
    """Measure every choice's export gate here; one :class:`Outcome` per choice, skipped ones with their reason."""
    return _gated(Path(model_dir), device, threads, progress)[2]


def steps(model_dir: str | Path, device: str = "cpu", rounds: int = 3) -> tuple[int, int]:
    """How many progress steps ``verify`` and ``tune`` take on ``model_dir``, for a progress bar's total."""
    gated = len(candidates(Manifest.read(model_dir), device))
    return gated, gated + rounds + 1


def tune(
    model_dir: str | Path,
    device: str = "cpu",
    threads: int | None = None,
    rounds: int = 3,
    sample: int = 32,
    progress: Progress | None = None,
    profile_dir: Path | None = None,
    objective: str = profile.THROUGHPUT,
) -> tuple[list[Outcome], Path, profile.Pick]:
    """Check each choice's gate here, time those that pass on ``sample`` of the stored real paragraphs
    (length-sorted batches, as ``Encoder.embed`` runs them) and on one short text, interleaved over ``rounds``,
    and save this machine's profile, tuned for ``objective`` (:data:`bert_onnx.runtime.profile.OBJECTIVES`: the
    most texts/s, or the least time for one short text). Returns the outcomes, the profile's path, and what
    ``Encoder`` now picks."""
    if not isinstance(rounds, int) or rounds < 1 or not isinstance(sample, int) or sample < 1:
        raise InvalidValueError(f"rounds={rounds!r} and sample={sample!r} must be positive ints")
    if objective not in profile.OBJECTIVES:
        raise InvalidValueError(f"objective={objective!r} is not one of {', '.join(profile.OBJECTIVES)}")
    threads = machine.check_threads(threads)  # before any work, and as the profile's key records it (an int)
    model_dir = Path(model_dir)
    manifest, references, outcomes, passing = _gated(model_dir, device, threads, progress)
    texts = list(references.texts[:sample])
    speeds = timing.compare(  # interleaved, after a warm-up: slow drifts of the machine hit every choice alike
        {name: functools.partial(encoder.embed_recipe, texts, TIMING_RECIPE) for name, encoder in passing.items()},
        rounds,
        min_seconds=MIN_TIMING_SECONDS,
        on_round=lambda index, planned: progress and progress(f"timing round {index + 1} of {planned}"),
    )
    if progress is not None:
        progress("timing one short text")
    latency = timing.compare(
        {
            name: functools.partial(encoder.embed_recipe, [SHORT_TEXT], TIMING_RECIPE)
            for name, encoder in passing.items()
        },
        SHORT_TEXT_ROUNDS,
        min_seconds=SHORT_TEXT_MIN_SECONDS,
    )
    timed = [
        dataclasses.replace(
            o, texts_per_second=speeds[o.name].rate(len(texts)), one_text_ms=latency[o.name].median * 1000
        )
        if o.name in speeds
        else o
        for o in outcomes
    ]
    entry = {
        "machine": profile.machine_key(device, threads),
        "versions": profile.library_versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "timing": {"texts": len(texts), "rounds": rounds, "statistic": "median"},
        "objective": objective,
        "choices": [o.to_dict() for o in timed],
    }
    path = profile.save_entry(manifest, model_dir, entry, profile_dir)
    return timed, path, profile.lookup(manifest, device, threads, profile_dir=profile_dir)
