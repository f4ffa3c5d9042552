"""Errors raised by export; the CLI turns them into a message and a non-zero exit."""

from __future__ import annotations

from bert_onnx.manifest import ParityReport


class ExportError(RuntimeError):
    """The checkpoint cannot be found, loaded or exported."""


class ParityError(ExportError):
    """ONNX Runtime's outputs differ from PyTorch's beyond the tolerance; carries the full report."""

    def __init__(self, report: ParityReport) -> None:
        failing = ", ".join(f"{o.name} ({o.max_abs_diff:.2e})" for o in report.failures)
        super().__init__(f"parity check failed for {failing}\n{report.table()}")
        self.report = report
