"""``export_model``: checkpoint in, verified model folder out, written atomically."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bert_onnx import __version__, choices, interface, machine
from bert_onnx._files import atomic_write_text, install_dir, staging_dir
from bert_onnx.choices import Choice
from bert_onnx.errors import InvalidValueError
from bert_onnx.export import variants as builders
from bert_onnx.export.checkpoint import resolve_checkpoint
from bert_onnx.export.corpus import split
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
from bert_onnx.gates import References
from bert_onnx.manifest import Manifest, VariantRecord, sha256_file
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
    if any(output.iterdir()) and not (output / interface.MANIFEST_FILE).is_file():
        raise ExportError(
            f"{output} is not empty and is not a bert-onnx model folder (no {interface.MANIFEST_FILE}); "
            "refusing to replace it even with --force"
        )


def check_variants(variants: Sequence[str] | str) -> tuple[str, ...]:
    """The choices to build and gate, fp32 first (always: it is the reference and the source of the others), in
    registry order; each must be able to have its gate measured on this machine."""
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in choices.CHOICES]
    if unknown:
        raise ExportError(f"unknown variant(s) {', '.join(map(repr, unknown))}; choose from {', '.join(choices.NAMES)}")
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
    if "cpu" not in choice.devices:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return (
                f"the {choice.name} variant is for CUDA and its gate runs on CUDA, but this onnxruntime has no "
                f"CUDAExecutionProvider (available: {', '.join(ort.get_available_providers())}); export it on a "
                "GPU machine with onnxruntime-gpu, or leave it out"
            )
    return None


def export_model(
    model: str = DEFAULT_MODEL,
    output: str | Path = "bert-onnx-model",
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    revision: str | None = None,
    variants: Sequence[str] = ("fp32",),
    log: Callable[[str], None] = _log.info,
    allow_unknown_modules: bool = False,
) -> Manifest:
    """Export ``model`` (hub id or checkpoint folder) to the folder ``output`` and return its manifest.

    The folder is built beside ``output`` and renamed into place only after ONNX Runtime matched PyTorch on
    every output within 1e-4 (:class:`ParityError` otherwise, and nothing is written). An existing ``output``
    is replaced only with ``force`` and only if it is empty or a previous export.

    ``variants`` adds faster graphs beside ``model.onnx`` ("opt", "int8", "fp16"; see
    :mod:`bert_onnx.export.variants`); each must pass its own gate or the export fails (:class:`VariantGateError`).
    Progress and the parity tables go to ``log`` (default: the ``bert_onnx.export.pipeline`` logger at INFO).

    A sentence-transformers checkpoint's recipe (pooling, Dense layers, normalization, length, prompts) is read
    and recorded as the folder's default (:mod:`bert_onnx.export.sentence_transformers`); what it cannot apply
    fails the export (``LayoutError``), or with ``allow_unknown_modules`` is recorded as not understood.
    """
    output = Path(output)
    chosen = check_variants(variants)
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(
            f"opset={opset} is not supported; choose {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
        )
    _check_target(output, force)
    started = time.perf_counter()

    def step(message: str) -> None:
        log(f"[{time.perf_counter() - started:6.1f}s] {message}")

    step(f"resolving {model}")
    checkpoint = resolve_checkpoint(model, revision=revision)
    family = read_family(checkpoint.path)
    try:
        family.check_variants(chosen)
    except InvalidValueError as exc:
        raise ExportError(str(exc)) from None
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
        converted = convert_tokenizer(checkpoint.path, int(config.vocab_size), staged / interface.TOKENIZER_FILE)
        layout = read_layout(
            checkpoint.path, int(config.hidden_size), max_length, converted.model_max_length, allow_unknown_modules
        )
        recipe_files = layout.write(staged)
        if layout.record.carried:
            log(f"recipe: {layout.record.summary()}")
        atomic_write_text(staged / interface.CONFIG_FILE, config.to_json_string())
        step(f"exporting {num_layers} layers, hidden size {config.hidden_size}, opset {opset}")
        export_graph(pytorch_model, staged / interface.MODEL_FILE, opset=opset)
        step("validating every output against PyTorch")
        fp32_path = staged / interface.MODEL_FILE
        report, parity_batch, expected = parity(pytorch_model, fp32_path, converted.reference, max_length)
        log(report.description)
        log(report.table())
        if not report.passed:
            raise ParityError(report)
        # int8 rounds, and OpenVINO compiles, differently per CPU: each gate says where it was measured.
        versions = _versions()
        measured_on: dict[str, object] = machine.describe()
        measured_on.update({k: versions[k] for k in ("onnxruntime", "openvino") if k in versions})
        fp32 = VariantRecord.from_parity(interface.MODEL_FILE, choices.get(choices.DEFAULT).devices, report)
        records = {choices.DEFAULT: dataclasses.replace(fp32, measured_on=measured_on)}
        runtime_tokenizer = Tokenizer.from_file(
            staged / interface.TOKENIZER_FILE, converted.pad_token_id, input_names=input_names
        )
        texts, _ = split(builders.GATE_TEXTS)
        embeddings = None
        if any(choices.get(name).gate.kind == choices.EMBEDDINGS for name in chosen):
            step(f"PyTorch's sentence embeddings of {len(texts)} real paragraphs, for the embeddings gate")
            embeddings = builders.torch_sentence_embeddings(pytorch_model, texts, runtime_tokenizer, max_length)
        rows = int(parity_batch["input_ids"].shape[0])
        # Export gates every row of every output; gates.npz keeps a smaller selection (bert_onnx.gates).
        gate_references = References.from_outputs(parity_batch, expected, rows, texts, embeddings)
        extra: dict[str, object] = {}
        for name in chosen[1:]:
            step(f"building the {name} variant and checking its gate")
            choice = choices.get(name)
            build = builders.Build(
                choice,
                staged / interface.MODEL_FILE,
                staged / choice.file,
                config,
                log,
                gate_references,
                runtime_tokenizer,
                max_length,
            )
            record, details = builders.MAKERS[name](build)
            record = dataclasses.replace(record, measured_on=measured_on)
            log(record.table())
            if not record.passed:
                raise VariantGateError(name, record)
            records[name] = record
            extra.update(details)
        step("storing the gates' PyTorch references for `bert-onnx verify` and `tune`")
        References.from_outputs(parity_batch, expected, SHORT_ROWS, texts, embeddings).save(
            staged / interface.GATES_FILE
        )
        manifest = Manifest(
            source=checkpoint.source,
            revision=checkpoint.revision,
            num_layers=num_layers,
            hidden_size=int(config.hidden_size),
            vocab_size=int(config.vocab_size),
            type_vocab_size=type_vocab_size(config),
            max_length=max_length,
            pad_token_id=converted.pad_token_id,
            opset=opset,
            versions=_versions(),
            inputs=interface.input_axes(input_names),
            outputs=interface.output_axes(num_layers, family.pooler),
            files={
                name: sha256_file(staged / name)
                for name in (
                    *interface.CHECKSUMMED_FILES,
                    interface.GATES_FILE,
                    *recipe_files,
                    *(r.file for r in records.values()),
                )
            },
            parity=report,
            notes=tuple(notes),
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            family=family.model_type,
            extra={
                "attn_implementation": "eager",
                "exporter": "torch.onnx.export (TorchScript)",
                "tokenizer_model_max_length": converted.model_max_length,
                **extra,
            },
            variants=records,
            recipe=layout.record,
        )
        manifest.write(staged)
        install_dir(staged, output, replace=force)
    step(f"wrote {output}")
    return manifest
