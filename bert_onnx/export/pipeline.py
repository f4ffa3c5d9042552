"""``export_model``: checkpoint in, verified model folder out, written atomically."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bert_onnx import __version__, interface, machine
from bert_onnx._files import atomic_write_text, install_dir, staging_dir
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


def check_variants(variants: Sequence[str]) -> tuple[str, ...]:
    """The variants to build, fp32 first (always: it is the reference and the source of the others)."""
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in interface.VARIANTS]
    if unknown:
        raise ExportError(
            f"unknown variant(s) {', '.join(map(repr, unknown))}; choose from {', '.join(interface.VARIANTS)}"
        )
    chosen = ("fp32", *(v for v in interface.VARIANTS if v in variants and v != "fp32"))
    if "fp16" in chosen:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ExportError(
                "the fp16 variant is for CUDA and its gate runs on CUDA, but this onnxruntime has no "
                f"CUDAExecutionProvider (available: {', '.join(ort.get_available_providers())}); export fp16 on a "
                "GPU machine with onnxruntime-gpu, or leave it out"
            )
    openvino = [v for v in chosen if v.startswith("openvino-")]
    if openvino:
        from bert_onnx.runtime.openvino_backend import check_precision, cpu_capabilities

        try:
            cpu_capabilities()  # imports openvino
            for name in openvino:
                check_precision(name.removeprefix("openvino-"))
        except RuntimeError as exc:  # BackendError: openvino missing, or no bf16 units for its gate
            raise ExportError(f"cannot check the {', '.join(openvino)} gate(s) here: {exc}") from exc
    return chosen


def export_model(
    model: str = DEFAULT_MODEL,
    output: str | Path = "bert-onnx-model",
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    revision: str | None = None,
    variants: Sequence[str] = ("fp32",),
    log: Callable[[str], None] = _log.info,
) -> Manifest:
    """Export ``model`` (hub id or checkpoint folder) to the folder ``output`` and return its manifest.

    The folder is built beside ``output`` and renamed into place only after ONNX Runtime matched PyTorch on
    every output within 1e-4 (:class:`ParityError` otherwise, and nothing is written). An existing ``output``
    is replaced only with ``force`` and only if it is empty or a previous export.

    ``variants`` adds faster graphs beside ``model.onnx`` ("opt", "int8", "fp16"; see
    :mod:`bert_onnx.export.variants`); each must pass its own gate or the export fails (:class:`VariantGateError`).
    Progress and the parity tables go to ``log`` (default: the ``bert_onnx.export.pipeline`` logger at INFO).
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
        fp32 = VariantRecord.from_parity(interface.MODEL_FILE, interface.VARIANT_DEVICES["fp32"], report)
        records = {"fp32": dataclasses.replace(fp32, measured_on=measured_on)}
        runtime_tokenizer = Tokenizer.from_file(
            staged / interface.TOKENIZER_FILE, converted.pad_token_id, input_names=input_names
        )
        extra: dict[str, object] = {}
        gate_store: dict[str, Any] = {}  # what variants add to gates.npz (int8: PyTorch's sentence embeddings)
        for name in chosen[1:]:
            step(f"building the {name} variant and checking its gate")
            target = staged / interface.VARIANT_FILES[name]
            build = builders.Build(
                pytorch_model,
                staged / interface.MODEL_FILE,
                target,
                converted.reference,
                max_length,
                log,
                runtime_tokenizer,
                references=gate_store,
            )
            record, details = builders.MAKERS[name](build)
            record = dataclasses.replace(record, measured_on=measured_on)
            log(record.table())
            if not record.passed:
                raise VariantGateError(name, record)
            records[name] = record
            extra.update(details)
        step("storing the gates' PyTorch references for `bert-onnx verify` and `tune`")
        texts, _ = split(builders.GATE_TEXTS)
        References.from_outputs(parity_batch, expected, SHORT_ROWS, texts, gate_store.get("embeddings")).save(
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
                for name in (*interface.CHECKSUMMED_FILES, interface.GATES_FILE, *(r.file for r in records.values()))
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
        )
        manifest.write(staged)
        install_dir(staged, output, replace=force)
    step(f"wrote {output}")
    return manifest
