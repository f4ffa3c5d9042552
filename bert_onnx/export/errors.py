"""Errors raised by export; the CLI turns them into a message and a non-zero exit."""

from __future__ import annotations

from bert_onnx.errors import BertOnnxError
from bert_onnx.manifest import ParityReport, VariantRecord


class ExportError(BertOnnxError, RuntimeError):
    """The checkpoint cannot be found, loaded or exported."""


class ParityError(ExportError):
    """ONNX Runtime's outputs differ from PyTorch's beyond the tolerance; carries the full report."""

    def __init__(self, report: ParityReport) -> None:
        failing = ", ".join(f"{o.name} ({o.max_abs_diff:.2e})" for o in report.failures)
        super().__init__(f"parity check failed for {failing}\n{report.table()}")
        self.report = report


class VariantGateError(ExportError):
    """A requested variant missed its accuracy gate; carries the measured checks."""

    def __init__(self, variant: str, record: VariantRecord) -> None:
        failing = ", ".join(f"{c.name} ({c.value:.4g})" for c in record.failures)
        super().__init__(f"variant {variant!r} failed its gate: {failing}\n{record.gate}\n{record.table()}")
        self.variant = variant
        self.record = record
