"""``export_model``: checkpoint in, verified model folder out, written atomically."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bert_onnx import __version__, choices, interface, machine
from bert_onnx._files import atomic_write_text, install_dir, remove_stale_staging, staging_dir
from bert_onnx.choices import Choice
from bert_onnx.errors import InvalidValueError
from bert_onnx.export import variants as builders
from bert_onnx.export.checkpoint import resolve_checkpoint
from bert_onnx.export.corpus import CORPORA, split
from bert_onnx.export.errors import ExportError, ParityError, VariantGateError
from bert_onnx.export.graph import (
    DEFAULT_OPSET,
    SUPPORTED_OPSETS,
    export_graph,
    graph_inputs,
    load_model,
    read_family,
    type_vocab_size,
)
from bert_onnx.export.sentence_transformers import read_layout
from bert_onnx.export.tokenizer import convert_tokenizer
from bert_onnx.export.validate import SHORT_ROWS, parity
from bert_onnx.gates import Corpus, References
from bert_onnx.manifest import FORMAT, Manifest, ParityReport, VariantRecord, sha256_file
from bert_onnx.runtime.tokenizer import Tokenizer

DEFAULT_MODEL = "bert-base-uncased"


def _versions() -> dict[str, str]:
    packages = ("torch", "transformers", "onnx", "onnxruntime", "tokenizers", "openvino")
    return {"bert-onnx": __version__, "python": platform.python_version(), **machine.installed_versions(packages)}


_log = logging.getLogger(__name__)


def _check_target(output: Path, force: bool) -> None:
    """Refuse to touch anything at ``output`` we did not write, whatever ``force`` says."""
    if not output.parent.is_dir():
        raise ExportError(f"{output}: the folder {output.parent} does not exist; create it first")
    if not output.exists():
        return
    if not output.is_dir():
        raise ExportError(f"{output} exists and is not a folder; choose another --output")
    if not force:
        raise ExportError(f"{output} already exists; pass --force to replace it")
    _check_replaceable(output)


_REFUSING = "refusing to replace it even with --force"


def _check_replaceable(output: Path) -> None:
    """``--force`` deletes the folder it replaces, so it must hold nothing a user gave it: it is empty, or an earlier
    export (its manifest is bert-onnx's) holding only the manifest and the files that manifest lists."""
    held = _contents(output)
    if not held:
        return
    manifest = output / interface.MANIFEST_FILE
    if not manifest.is_file():
        raise ExportError(
            f"{output} is not empty and is not a bert-onnx model folder (no {interface.MANIFEST_FILE}); {_REFUSING}"
        )
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(
            f"{output} is not a bert-onnx model folder: its {interface.MANIFEST_FILE} cannot be read as JSON ({exc}); "
            f"{_REFUSING}"
        ) from exc
    found = data.get("format") if isinstance(data, dict) else None
    files = data.get("files") if isinstance(data, dict) else None
    if found != FORMAT or not isinstance(files, dict):
        raise ExportError(
            f"{output} is not a bert-onnx model folder: its {interface.MANIFEST_FILE} is not a bert-onnx manifest "
            f"(format {found!r}, not {FORMAT!r}); {_REFUSING}"
        )
    listed = {interface.MANIFEST_FILE, *map(str, files)}
    unlisted = [name for name in held if name not in listed]
    if unlisted:
        shown = ", ".join(unlisted[:10]) + (f" and {len(unlisted) - 10} more" if len(unlisted) > 10 else "")
        raise ExportError(
            f"{output} is an earlier export but also holds what its {interface.MANIFEST_FILE} does not list: {shown}; "
            f"{_REFUSING}: move them out, or choose another --output"
        )


def _contents(folder: Path) -> list[str]:
    """Everything under ``folder`` a replacement would delete, as sorted relative paths: files, links, and folders
    with nothing in them."""
    held = []
    for root, dirs, names in os.walk(folder):
        base = Path(root).relative_to(folder)
        links = [d for d in dirs if (Path(root) / d).is_symlink()]  # walk does not enter linked folders
        held += [(base / name).as_posix() for name in (*names, *links)]
        if not dirs and not names and base != Path("."):
            held.append(base.as_posix() + "/")
    return sorted(held)


ALL = "all"  # --variants all: every choice whose gate can be measured here


def check_variants(variants: Sequence[str] | str, log: Callable[[str], None] = _log.info) -> tuple[str, ...]:
    """The choices to build and gate, fp32 first (always: it is the reference and the source of the others), in
    registry order. Each named one must be able to have its gate measured on this machine; ``"all"`` takes every
    choice that can, and logs why each other one cannot."""
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    if ALL in variants:
        if len(variants) > 1:
            raise ExportError(f"--variants {ALL} names every choice; give it alone, not with {', '.join(variants)}")
        gated = [choices.DEFAULT]
        for name in choices.NAMES[1:]:
            reason = _cannot_gate_here(choices.get(name))
            if reason:
                log(f"not building {name}: cannot check its gate here: {reason}")
            else:
                gated.append(name)
        return tuple(gated)
    unknown = [v for v in variants if v not in choices.CHOICES]
    if unknown:
        raise ExportError(
            f"unknown variant(s) {', '.join(map(repr, unknown))}; choose from {', '.join(choices.NAMES)} or {ALL}"
        )
    chosen = (choices.DEFAULT, *(name for name in choices.NAMES if name in variants and name != choices.DEFAULT))
    for name in chosen[1:]:
        reason = _cannot_gate_here(choices.get(name))
        if reason:
            raise ExportError(f"cannot check the {name} gate here: {reason}")
    return chosen


def _cannot_gate_here(choice: Choice) -> str | None:
    """Why ``choice``'s gate cannot be measured on this machine (its backend or device is missing), if so."""
    if choice.backend == choices.OPENVINO:
        from bert_onnx.runtime.openvino_backend import BackendError, check_precision, cpu_capabilities

        try:
            cpu_capabilities()  # imports openvino
            check_precision(choice.precision)
        except BackendError as exc:  # openvino missing, or no bf16 units for its gate
            return str(exc)
        if choice.own_file:
            from bert_onnx.export.openvino_int8 import nncf_missing

            return nncf_missing()
    if "cpu" not in choice.devices:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return (
                f"the {choice.name} variant is for CUDA and its gate runs on CUDA, but this onnxruntime has no "
                f"CUDAExecutionProvider (available: {', '.join(ort.get_available_providers())}); export it on a "
                "GPU machine with onnxruntime-gpu, or leave it out"
            )
    return None


def gate_corpora(
    bert: Any, tokenizer: Tokenizer, max_length: int, embedded: bool, step: Callable[[str], None]
) -> list[Corpus]:
    """The embeddings gate's texts of every corpus (:mod:`bert_onnx.export.corpus`) and, when a chosen variant has
    that gate (``embedded``), PyTorch's sentence embeddings of them."""
    corpora = []
    for name in CORPORA:
        texts, _ = split(builders.GATE_TEXTS, corpus=name)
        embeddings = None
        if embedded:
            step(f"PyTorch's sentence embeddings of {len(texts)} real {name} texts, for the embeddings gate")
            embeddings = builders.torch_sentence_embeddings(bert, texts, tokenizer, max_length)
        corpora.append(Corpus(name, tuple(texts), embeddings))
    return corpora


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every variant's build shares in one export."""

    staged: Path
    config: Any
    log: Callable[[str], None]
    references: References
    tokenizer: Tokenizer
    max_length: int
    measured_on: dict[str, object]


def _build_variant(name: str, context: _Context) -> tuple[VariantRecord, dict[str, object]]:
    """Build choice ``name``'s file (if it has one) in the staging folder and measure its gate."""
    choice = choices.get(name)
    build = builders.Build(
        choice,
        context.staged / interface.MODEL_FILE,
        context.staged / choice.file,
        context.config,
        context.log,
        context.references,
        context.tokenizer,
        context.max_length,
    )
    record, details = builders.MAKERS[name](build)
    record = dataclasses.replace(record, measured_on=context.measured_on)
    context.log(record.table())
    return record, details


def _build_variants(
    names: Sequence[str], context: _Context, all_mode: bool, step: Callable[[str], None]
) -> tuple[dict[str, VariantRecord], dict[str, object]]:
    """Build and gate each of ``names``: the records of those that pass, and their manifest details. A named one
    that fails fails the export; under ``--variants all`` it is left out (no file), saying why."""
    records: dict[str, VariantRecord] = {}
    extra: dict[str, object] = {}
    not_stored: dict[str, str] = {}
    for name in names:
        step(f"building the {name} variant and checking its gate")
        record, details = _build_variant(name, context)
        if record.passed:
            records[name] = record
            extra.update(details)
        elif all_mode:
            not_stored[name] = "failed its gate: " + ", ".join(f"{c.name} {c.value:.4g}" for c in record.failures)
            context.log(f"not storing {name}: it {not_stored[name]}")
            _remove_files(context.staged, choices.get(name))
        else:
            raise VariantGateError(name, record)
    if not_stored:
        extra["variants_not_stored"] = not_stored
    return records, extra


def _measured_on() -> dict[str, object]:
    """Where the gates are measured: int8 rounds, and OpenVINO compiles, differently per CPU and version."""
    versions = _versions()
    measured_on: dict[str, object] = machine.describe()
    measured_on.update({k: versions[k] for k in ("onnxruntime", "openvino") if k in versions})
    return measured_on


def _checksums(staged: Path, records: Mapping[str, VariantRecord], recipe_files: Sequence[str]) -> dict[str, str]:
    """SHA-256 of every file the folder keeps: the fixed ones, the gates' references, the recipe's weights, each
    stored choice's."""
    kept = dict.fromkeys(f for name in records for f in choices.get(name).all_files)
    names = (*interface.CHECKSUMMED_FILES, interface.GATES_FILE, *recipe_files, *kept)
    return {name: sha256_file(staged / name) for name in dict.fromkeys(names)}


def _is_all(variants: Sequence[str] | str) -> bool:
    names = [v.strip() for v in variants.split(",")] if isinstance(variants, str) else list(variants)
    return names == [ALL]


def _remove_files(staged: Path, choice: Choice) -> None:
    """A choice that is not stored leaves no file behind."""
    if choice.own_file:
        for name in choice.all_files:
            (staged / name).unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class _Model:
    """What the manifest records of the checkpoint: its family, its usable length, its graph's inputs, its
    recipe."""

    family: Any
    max_length: int
    input_names: tuple[str, ...]
    recipe: Any


def _manifest(
    checkpoint: Any,
    config: Any,
    converted: Any,
    opset: int,
    report: ParityReport,
    notes: Sequence[str],
    files: dict[str, str],
    records: dict[str, VariantRecord],
    extra: dict[str, object],
    model: _Model,
) -> Manifest:
    """The folder's manifest: where it came from, its interface, its files' checksums and its variants' gates."""
    num_layers = int(config.num_hidden_layers)
    return Manifest(
        source=checkpoint.source,
        revision=checkpoint.revision,
        num_layers=num_layers,
        hidden_size=int(config.hidden_size),
        vocab_size=int(config.vocab_size),
        type_vocab_size=type_vocab_size(config),
        max_length=model.max_length,
        pad_token_id=converted.pad_token_id,
        opset=opset,
        versions=_versions(),
        inputs=interface.input_axes(model.input_names),
        outputs=interface.output_axes(num_layers, model.family.pooler),
        files=files,
        parity=report,
        notes=tuple(notes),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        family=model.family.model_type,
        recipe=model.recipe,
        extra={
            "attn_implementation": "eager",
            "exporter": "torch.onnx.export (TorchScript)",
            "tokenizer_model_max_length": converted.model_max_length,
            **extra,
        },
        variants=records,
    )


def _check_request(output: Path, opset: int, force: bool, log: Callable[[str], None]) -> None:
    """Refuse a bad opset or target before any work; remove what killed exports of ``output`` left beside it."""
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(
            f"opset={opset} is not supported; choose {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
        )
    _check_target(output, force)
    for stale in remove_stale_staging(output):
        log(f"removed {stale}: the staging folder of an export of {output} that was killed")


def export_model(
    model: str = DEFAULT_MODEL,
    output: str | Path = "bert-onnx-model",
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    revision: str | None = None,
    variants: Sequence[str] | str = ("fp32",),
    log: Callable[[str], None] = _log.info,
    allow_unknown_modules: bool = False,
) -> Manifest:
    """Export ``model`` (hub id or checkpoint folder of a family in :mod:`bert_onnx.families`) to the folder
    ``output`` and return its manifest.

    The folder is built beside ``output`` and renamed into place only after ONNX Runtime matched PyTorch on
    every output within 1e-4 (:class:`ParityError` otherwise, and nothing is written). An existing ``output``
    is replaced only with ``force``, and only if it is empty or a previous export (its ``manifest.json`` is
    bert-onnx's) holding nothing but the files its manifest lists: a folder holding anything else is refused,
    naming what, so ``force`` never deletes a file bert-onnx did not write. Staging folders that a killed export of
    ``output`` left beside it (``.NAME.HOST-PID-*.partial``, their process gone) are removed first.

    ``variants`` adds faster ways of running (:mod:`bert_onnx.choices`); each named one must pass its own gate or
    the export fails (:class:`VariantGateError`). ``"all"`` stores every choice whose gate can be measured here and
    passes; the others are logged and listed in ``extra["variants_not_stored"]``. Progress goes to ``log``.

    A sentence-transformers checkpoint's recipe (pooling, Dense layers, normalization, length, prompts) is read
    and recorded as the folder's default (:mod:`bert_onnx.export.sentence_transformers`); what it cannot apply
    fails the export (``LayoutError``), or with ``allow_unknown_modules`` is recorded as not understood.
    """
    output = Path(output)
    chosen = check_variants(variants, log)
    _check_request(output, opset, force, log)
    started = time.perf_counter()

    def step(message: str) -> None:
        log(f"[{time.perf_counter() - started:6.1f}s] {message}")

    step(f"resolving {model}")
    checkpoint = resolve_checkpoint(model, revision=revision)
    family = read_family(checkpoint.path)
    chosen = _offered(family, chosen, _is_all(variants), log)
    step(f"loading {family.model_class} from {checkpoint.path}")
    pytorch_model, notes = load_model(checkpoint.path)
    for note in notes:
        log(f"warning: {note}")
    config = pytorch_model.config
    num_layers = int(config.num_hidden_layers)
    max_length = family.usable_length(config)
    input_names = graph_inputs(config)

    with staging_dir(output) as staged:
        step("converting the tokenizer")
        converted, layout, recipe_files = _tokenizer_and_recipe(
            checkpoint.path, config, max_length, staged, allow_unknown_modules, log
        )
        atomic_write_text(staged / interface.CONFIG_FILE, config.to_json_string())
        step(f"exporting {num_layers} layers, hidden size {config.hidden_size}, opset {opset}")
        export_graph(pytorch_model, staged / interface.MODEL_FILE, opset=opset)
        step("validating every output against PyTorch")
        report, parity_batch, expected = _parity(pytorch_model, staged, converted.reference, max_length, log)
        measured_on = _measured_on()
        fp32 = VariantRecord.from_parity(interface.MODEL_FILE, choices.get(choices.DEFAULT).devices, report)
        runtime_tokenizer = Tokenizer.from_file(staged / interface.TOKENIZER_FILE, converted.pad_token_id, input_names)
        embedded = any(choices.get(name).gate.kind == choices.EMBEDDINGS for name in chosen)
        corpora = gate_corpora(pytorch_model, runtime_tokenizer, max_length, embedded, step)
        rows = int(parity_batch["input_ids"].shape[0])
        # Export gates every row of every output; gates.npz keeps a smaller selection (bert_onnx.gates).
        gate_references = References.from_outputs(parity_batch, expected, rows, corpora)
        context = _Context(staged, config, log, gate_references, runtime_tokenizer, max_length, measured_on)
        records, extra = _build_variants(chosen[1:], context, _is_all(variants), step)
        records = {choices.DEFAULT: dataclasses.replace(fp32, measured_on=measured_on), **records}
        step("storing the gates' PyTorch references for `bert-onnx verify` and `tune`")
        References.from_outputs(parity_batch, expected, SHORT_ROWS, corpora).save(staged / interface.GATES_FILE)
        files = _checksums(staged, records, recipe_files)
        described = _Model(family, max_length, input_names, layout.record)
        manifest = _manifest(checkpoint, config, converted, opset, report, notes, files, records, extra, described)
        manifest.write(staged)
        _check_target(output, force)  # again: files may have been put there while the export ran
        install_dir(staged, output, replace=force)
    step(f"wrote {output}")
    return manifest


def _parity(
    model: Any, staged: Path, tokenizer: Any, max_length: int, log: Callable[[str], None]
) -> tuple[ParityReport, dict[str, Any], dict[str, Any]]:
    """Every output of the fp32 graph against PyTorch (:class:`ParityError` if one misses): the report, the parity
    batch and PyTorch's outputs on it."""
    report, batch, expected = parity(model, staged / interface.MODEL_FILE, tokenizer, max_length)
    log(report.description)
    log(report.table())
    if not report.passed:
        raise ParityError(report)
    return report, batch, expected


def _tokenizer_and_recipe(
    path: Path, config: Any, max_length: int, staged: Path, allow_unknown: bool, log: Callable[[str], None]
) -> tuple[Any, Any, list[str]]:
    """The checkpoint's tokenizer, converted into the folder, and its sentence-transformers recipe, read and its
    files written: (the conversion, the layout, the recipe's files)."""
    converted = convert_tokenizer(path, int(config.vocab_size), staged / interface.TOKENIZER_FILE)
    layout = read_layout(path, int(config.hidden_size), max_length, converted.model_max_length, allow_unknown)
    recipe_files = list(layout.write(staged))
    if layout.record.carried:
        log(f"recipe: {layout.record.summary()}")
    return converted, layout, recipe_files


def _offered(family: Any, chosen: tuple[str, ...], all_mode: bool, log: Callable[[str], None]) -> tuple[str, ...]:
    """The chosen choices the family offers: under ``--variants all`` the others are left out saying why; a named
    one the family does not offer fails the export."""
    if all_mode:
        for name in chosen:
            if name in family.not_offered:
                log(f"not building {name} for {family.model_type}: {family.not_offered[name]}")
        return tuple(name for name in chosen if name not in family.not_offered)
    try:
        family.check_variants(chosen)
    except InvalidValueError as exc:
        raise ExportError(str(exc)) from None
    return chosen
