"""What every benchmark shares besides the timing itself (:mod:`bert_onnx.timing`): the common command-line options,
the engines several benchmarks run (PyTorch, the ids they feed), the table, and the results files.

A results file (``benchmarks/results/NAME-STAMP.json`` and ``.md``) holds numbers, never preformatted strings: the
run's rows, the machine (CPU, core count, instruction sets) and the installed versions of the libraries that do the
work. The ``.md`` beside it holds the label, the machine and versions in one line, and the table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from benchmarks.results_io import cpu_flags, machine, write_results
from bert_onnx import machine as machine_info
from bert_onnx import timing

T = TypeVar("T")
Forward = Callable[[np.ndarray, np.ndarray], Any]  # (ids, mask) -> the model's outputs
PACKAGES = ("bert-onnx", "numpy", "onnxruntime", "openvino", "tokenizers", "torch", "transformers")
RESULTS = Path("benchmarks/results")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


# -- command line -------------------------------------------------------------------------------------------------


def arguments(
    doc: str | None,
    *,
    model_dir: Literal["option", "positional", None] = "option",
    checkpoint: Literal["required", "optional", None] = None,
    threads: Literal["cpus", "runtime", None] = "cpus",
    repeats: int | None = None,
    label: bool = True,
) -> argparse.ArgumentParser:
    """A parser with the options benchmarks share; each adds its own after.

    ``threads="cpus"`` defaults ``--threads`` to every CPU this process may use (``machine.usable_cpus``: affinity
    and cgroup quota), ``"runtime"`` to the runtime's own choice (``None``, as ``bert-onnx tune`` and ``Encoder``
    default). ``repeats`` is ``--repeats``' default.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if model_dir == "option":
        parser.add_argument("--model-dir", type=Path, required=True, help="a folder written by bert-onnx export")
    elif model_dir == "positional":
        parser.add_argument("model_dir", type=Path, metavar="DIR", help="a folder written by bert-onnx export")
    if checkpoint is not None:
        parser.add_argument(
            "--checkpoint", type=Path, required=checkpoint == "required", help="the checkpoint DIR was exported from"
        )
    if threads == "cpus":
        cpus = machine_info.usable_cpus()
        parser.add_argument("--threads", type=int, default=cpus, help="default: every CPU this process may use")
    elif threads == "runtime":
        parser.add_argument("--threads", type=int, default=None, help="default: the runtime's (physical cores)")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help=f"timed rounds (default: {repeats})")
    if label:
        parser.add_argument("--label", default="", help="what the weights are, e.g. 'bert-base shape, RANDOM weights'")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default: {RESULTS})")
    return parser


def note(message: str) -> None:
    """Progress on stderr, so a long run shows where it is and stdout keeps the table."""
    print(message, file=sys.stderr, flush=True)


# -- the table ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A table column: its header, the row's value (a key, or a function of the row) and its format spec."""

    header: str
    value: str | Callable[[Mapping[str, Any]], Any]
    spec: str = ""

    def cell(self, row: Mapping[str, Any]) -> str:
        value = row.get(self.value) if isinstance(self.value, str) else self.value(row)
        return "-" if value is None else format(value, self.spec)


SHAPE_COLUMN = Column("batch × seq", lambda r: f"{r['batch']} × {r['sequence']}")
TIMING_COLUMNS = (Column("median ms", "median_ms", ".1f"), Column("p99 ms", "p99_ms", ".1f"), Column("n", "rounds"))


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A Markdown table of ``rows``; a missing value shows as ``-``."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.cell(row) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


# -- results files ------------------------------------------------------------------------------------------------


def versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of :data:`PACKAGES` and ``extra``, those that are installed (read without importing)."""
    return machine_info.installed_versions(dict.fromkeys([*PACKAGES, *extra]))


def machine_line(found: Mapping[str, str], load: Sequence[float]) -> str:
    described = machine()
    packages = ", ".join(f"{name} {version}" for name, version in found.items())
    return (
        f"Machine: {described['cpu']}, {described['cpus']} CPUs, ISA: {', '.join(described['isa'])}; load average "
        f"{load[0]:.2f} at the end. {packages}."
    )


def write(
    out: Path, name: str, result: Mapping[str, Any], markdown: str, label: str = "", packages: Iterable[str] = ()
) -> Path:
    """Write ``out/NAME-STAMP.json`` (``result`` with the time, machine, library versions and the load average
    now: 1, 5 and 15 minutes) and ``.md``; print the table. ``result["versions"]``, where given, adds to the
    versions found (an environment of its own)."""
    found = {**versions(packages), **result.get("versions", {})}
    load = os.getloadavg()
    heading = "\n\n".join(part for part in (label, machine_line(found, load)) if part)
    return write_results(out, name, {**result, "versions": found, "load_average_at_end": list(load)}, markdown, heading)


# -- measuring ----------------------------------------------------------------------------------------------------


def compare_outputs(
    engines: Mapping[str, Callable[[], T]], rounds: int = 3, **options: Any
) -> tuple[dict[str, timing.Timing], dict[str, T]]:
    """:func:`bert_onnx.timing.compare`, keeping each engine's last output (for accuracy columns beside speed)."""
    outputs: dict[str, T] = {}

    def keeping(name: str, engine: Callable[[], T]) -> Callable[[], None]:
        def call() -> None:
            outputs[name] = engine()

        return call

    timings = timing.compare({name: keeping(name, engine) for name, engine in engines.items()}, rounds, **options)
    return timings, outputs


def timing_row(measured: timing.Timing, items: int = 1, per: str = "items") -> dict[str, Any]:
    """The columns every timed row has (:data:`TIMING_COLUMNS` shows them): rounds, calls per round, median and
    p99 ms, ``PER_per_s`` at the median, and each round's seconds per call."""
    return {
        "rounds": measured.rounds,
        "calls_per_round": measured.calls,
        "median_ms": measured.median * 1e3,
        "p99_ms": measured.p99 * 1e3,
        f"{per}_per_s": measured.rate(items),
        "seconds_per_call": list(measured.seconds),  # every round's, for a reader to judge the spread
    }


def ratio(timings: Mapping[str, timing.Timing], name: str, reference: str) -> float:
    """How many times faster ``name`` ran than ``reference``, at the medians of the same run."""
    return timings[reference].median / timings[name].median


# -- engines ------------------------------------------------------------------------------------------------------


def has_bf16_units() -> bool:
    """PyTorch bf16 autocast is only worth a row where the CPU has bf16 units; elsewhere it is emulated, slowly."""
    return bool(set(BF16_FLAGS) & cpu_flags())


def openvino_precisions() -> list[str]:
    """The OpenVINO precisions this CPU runs: fp32, and bf16 where OpenVINO reports BF16; none without OpenVINO."""
    from bert_onnx.runtime.openvino_backend import BackendError, cpu_capabilities

    try:
        return ["fp32", "bf16"] if "BF16" in cpu_capabilities() else ["fp32"]
    except BackendError:  # openvino not installed
        return []


def cpu_graphs(model_dir: Path) -> list[str]:
    """The folder's stored graphs that ONNX Runtime runs on the CPU (``Encoder(variant=...)``), not OpenVINO's gates
    (which name no graph of their own)."""
    from bert_onnx import choices
    from bert_onnx.manifest import Manifest

    stored = Manifest.read(model_dir).variants
    return [
        name
        for name in stored
        if name in choices.CHOICES
        and choices.CHOICES[name].backend == choices.ONNXRUNTIME
        and "cpu" in choices.CHOICES[name].devices
    ]


def random_inputs(rng: np.random.Generator, vocab: int, batch: int, sequence: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids between ``[CLS]`` and ``[SEP]``, full attention mask: ``(batch, sequence)`` int64 each."""
    ids = rng.integers(1000, vocab, size=(batch, sequence), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, np.ones_like(ids)


def pytorch_engine(checkpoint: Path, threads: int | None, bf16: bool = False) -> Forward:
    """PyTorch eager on ``checkpoint`` (every hidden state), fp32 or under bf16 autocast; ``threads=None`` leaves
    PyTorch's own thread count."""
    import contextlib

    import torch

    from bert_onnx.export.graph import load_model

    if threads is not None:
        torch.set_num_threads(threads)
    model, _ = load_model(checkpoint)

    def forward(ids: np.ndarray, mask: np.ndarray) -> Any:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            return model(
                input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True
            )

    return forward
