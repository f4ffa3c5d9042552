"""Issue 19's targets, measured: ``Encoder(DIR)`` as tuned against ORT fp32, every choice by hand and PyTorch.

    python -m benchmarks.targets DIR [--torch CHECKPOINT] [--real-text DIR2] [--threads N] [--rounds 10]

DIR is a bert-base-shaped folder (``bert-onnx export CKPT --variants fp32,opt,int8,openvino-fp32,openvino-bf16``,
then ``bert-onnx tune DIR``). In one process, interleaved round by round after warm-up rounds
(:func:`bert_onnx.timing.compare`), on the same random ids (full attention mask) at 8 × 128 and 1 × 7, every
output returned:

- ``tuned``: ``Encoder(DIR)``, whatever this machine's profile picks (its choice and the reason are recorded);
- every choice that can run here, opened by hand, whatever the folder and the registry of choices offer (so a new
  choice appears without a change here); ``fp32`` is ORT fp32, the reference;
- with ``--torch CHECKPOINT`` (the checkpoint DIR was exported from): PyTorch eager fp32, and PyTorch under
  ``torch.autocast("cpu", dtype=torch.bfloat16)`` where the CPU has bf16 units.

Rows: median and p99 ms, × ORT fp32, and × PyTorch's best (the faster PyTorch row at that shape). With
``--real-text DIR2`` (a MiniLM folder, tuned the same way) also docs/s on real paragraphs (mean pooling,
normalized, batches of 32), ``Encoder(DIR2)`` and each choice, × ORT fp32. Last, issue 19's targets for this CPU's
class (AMX, AVX-512 VNNI, AVX2), each with the value measured and whether it is met. The load average before and
after is recorded: on a shared machine, read the ratios rather than the milliseconds.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import Column
from benchmarks.results_io import cpu_flags
from bert_onnx import timing
from bert_onnx.runtime import Encoder

TUNED, REFERENCE = "tuned", "fp32"  # ORT fp32 is the choice named fp32
PYTORCH = ("pytorch-eager", "pytorch-bf16-autocast")
SHAPES = ((8, 128), (1, 7))
BATCH = 32
COLUMNS = [
    Column("engine", "engine"),
    Column("runs", "choice"),
    harness.SHAPE_COLUMN,
    *harness.TIMING_COLUMNS,
    Column("× ORT fp32", "x_ort_fp32", ".2f"),
    Column("× PyTorch's best", "x_pytorch_best", ".2f"),
    Column("gate here (tune)", "gate_here"),
]
TEXT_COLUMNS = [
    Column("engine", "engine"),
    Column("runs", "choice"),
    Column("docs/s", "docs_per_s", ".1f"),
    Column("× ORT fp32", "x_ort_fp32", ".2f"),
    Column("gate here (tune)", "gate_here"),
]
TARGET_COLUMNS = [
    Column("CPU class", "cpu_class"),
    Column("target", "target"),
    Column("wanted", lambda r: f"{r['comparison']} {r['threshold']:g}"),
    Column("measured", "measured", ".2f"),
    Column("met", lambda r: None if r["met"] is None else "yes" if r["met"] else "NO"),
]
# CPU class -> (what, comparison, threshold): issue 19's table
TARGETS: Mapping[str, tuple[tuple[str, str, float], ...]] = {
    "AMX": (
        ("8 × 128: tuned × ORT fp32", ">=", 4.0),
        ("8 × 128: tuned × PyTorch's best", ">=", 2.0),
        ("1 × 7: tuned ms", "<=", 6.0),
        ("real text: tuned docs/s × ORT fp32", ">=", 3.0),
    ),
    "AVX-512 VNNI": (("8 × 128: tuned × ORT fp32", ">=", 3.0),),
    "AVX2": (("8 × 128: tuned × ORT fp32", ">=", 1.8),),
}


# -- the registry of choices: the one place that knows where they are listed -------------------------------------


@dataclass(frozen=True)
class Choice:
    """One way of running the folder: how to open it, and why it cannot run here (``None``: it can)."""

    name: str
    skipped: str | None
    open: Callable[[], Encoder]


def choices_here(folder: Path, threads: int | None) -> list[Choice]:
    """Every choice the folder and the registry offer on the CPU: ``bert_onnx.tuning``'s
    candidates (over the registry, ``bert_onnx.choices.CHOICES``)."""
    from bert_onnx import tuning
    from bert_onnx.manifest import Manifest

    return [
        Choice(name, reason, partial(tuning.open_choice, folder, name, "cpu", threads))
        for name, reason in tuning.candidates(Manifest.read(folder), "cpu")
    ]


def gates_here(folder: Path, threads: int | None) -> dict[str, str]:
    """Each choice's gate as ``bert-onnx tune`` last measured it on this machine and thread setting ("ok",
    "FAIL", "skipped"); empty when it has not been tuned here."""
    from bert_onnx.manifest import Manifest
    from bert_onnx.runtime import profile

    key = profile.machine_key("cpu", threads)
    entries = [e for e in profile.read_entries(profile.profile_path(Manifest.read(folder))) if e.get("machine") == key]
    choices = entries[-1].get("choices", []) if entries else []
    return {c["name"]: c.get("status", "-") for c in choices if isinstance(c, dict) and "name" in c}


# -- measuring ----------------------------------------------------------------------------------------------------


def open_encoders(folder: Path, threads: int | None) -> tuple[dict[str, Encoder], dict[str, str]]:
    """``tuned`` and every choice that runs here, opened; and the skipped ones with their reasons."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*was not validated for .* at export")
        encoders = {TUNED: Encoder(folder, threads=threads)}
    skipped = {}
    for choice in choices_here(folder, threads):
        if choice.skipped is None:
            encoders[choice.name] = choice.open()
        else:
            skipped[choice.name] = choice.skipped
    if REFERENCE not in encoders:
        raise RuntimeError(f"{folder}: ORT fp32 ({REFERENCE!r}) cannot run here: {skipped.get(REFERENCE)}")
    return encoders, skipped


def _row(
    name: str, measured: timing.Timing, timings: Mapping[str, timing.Timing], encoders: Mapping[str, Encoder]
) -> dict[str, Any]:
    row: dict[str, Any] = {"engine": name, "choice": encoders[name].choice if name in encoders else "pytorch"}
    row["x_ort_fp32"] = harness.ratio(timings, name, REFERENCE)
    torch_rows = [timings[n].median for n in PYTORCH if n in timings]
    row["x_pytorch_best"] = min(torch_rows) / measured.median if torch_rows else None
    return row


def shape_rows(
    folder: Path, encoders: Mapping[str, Encoder], torch: Mapping[str, harness.Forward], args: Any
) -> list[dict[str, Any]]:
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(0)
    gates = gates_here(folder, args.threads)
    engines: dict[str, harness.Forward] = {**{n: e.run for n, e in encoders.items()}, **torch}
    rows = []
    for batch, sequence in SHAPES:
        ids, mask = harness.random_inputs(rng, vocab, batch, sequence)
        timings = timing.compare(
            {name: partial(engine, ids, mask) for name, engine in engines.items()},
            args.rounds,
            warmup=args.warmup,
            min_seconds=args.min_seconds,
            budget_seconds=args.budget,
        )
        for name, measured in timings.items():
            row = {**_row(name, measured, timings, encoders), "batch": batch, "sequence": sequence}
            row.update(harness.timing_row(measured, batch, per="sequences"))
            rows.append({**row, "threads": args.threads, "gate_here": gates.get(row["choice"])})
        harness.note(f"{batch} × {sequence}: {timings[REFERENCE].rounds} rounds")
    return rows


def text_rows(folder: Path, count: int, rounds: int, threads: int | None) -> list[dict[str, Any]]:
    from bert_onnx.export.corpus import split

    texts, _ = split(count, seed=1)  # the paragraphs benchmarks.corpus embeds
    encoders, _ = open_encoders(folder, threads)
    gates = gates_here(folder, threads)
    embed = {n: partial(e.embed, texts, pooling="mean", normalize=True, batch_size=BATCH) for n, e in encoders.items()}
    timings = timing.compare(embed, rounds, warmup=0)  # as benchmarks.corpus: long calls, no warm-up round
    rows = []
    for name, measured in timings.items():
        row = {**_row(name, measured, timings, encoders), "texts": len(texts), "threads": threads}
        row.update(harness.timing_row(measured, len(texts), per="docs"))
        rows.append({**row, "gate_here": gates.get(row["choice"])})
    return rows


# -- the targets --------------------------------------------------------------------------------------------------


def cpu_class() -> str:
    flags = cpu_flags()
    if {"amx_int8", "amx_bf16"} & flags:
        return "AMX"
    return "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2"


def target_rows(rows: list[dict[str, Any]], text: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tuned = {(r["batch"], r["sequence"]): r for r in rows if r["engine"] == TUNED}
    measured = {
        "8 × 128: tuned × ORT fp32": tuned[8, 128]["x_ort_fp32"],
        "8 × 128: tuned × PyTorch's best": tuned[8, 128]["x_pytorch_best"],
        "1 × 7: tuned ms": tuned[1, 7]["median_ms"],
        "real text: tuned docs/s × ORT fp32": next((r["x_ort_fp32"] for r in text if r["engine"] == TUNED), None),
    }
    found = []
    for what, comparison, threshold in TARGETS[cpu_class()]:
        value = measured[what]
        met = None if value is None else value >= threshold if comparison == ">=" else value <= threshold
        found.append(
            {"cpu_class": cpu_class(), "target": what, "comparison": comparison, "threshold": threshold}
            | {"measured": value, "met": met}
        )
    return found


def main() -> None:
    parser = harness.arguments(__doc__, model_dir="positional", threads="runtime", label=False)
    parser.add_argument("--torch", type=Path, metavar="CHECKPOINT", help="add PyTorch rows for this checkpoint")
    parser.add_argument("--real-text", type=Path, metavar="DIR2", help="also docs/s on real text with this folder")
    parser.add_argument("--texts", type=int, default=1000, help="real paragraphs for --real-text (default: 1000)")
    parser.add_argument("--text-rounds", type=int, default=3, help="rounds for --real-text (default: 3)")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per shape, at most (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up rounds per shape (default: 2)")
    parser.add_argument("--min-seconds", type=float, default=0.2, help="shortest measurement (default: 0.2 s)")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of timed rounds per shape, about")
    args = parser.parse_args()
    load_before = os.getloadavg()
    encoders, skipped = open_encoders(args.model_dir, args.threads)
    torch: dict[str, harness.Forward] = {}
    if args.torch is not None:
        torch[PYTORCH[0]] = harness.pytorch_engine(args.torch, args.threads)
        if harness.has_bf16_units():
            torch[PYTORCH[1]] = harness.pytorch_engine(args.torch, args.threads, bf16=True)
    described = encoders[TUNED].describe()
    rows = shape_rows(args.model_dir, encoders, torch, args)
    encoders.clear()  # free their memory before the real-text folder's encoders open
    torch.clear()
    text = [] if args.real_text is None else text_rows(args.real_text, args.texts, args.text_rounds, args.threads)
    targets = target_rows(rows, text)
    load = {"before": list(load_before), "after": list(os.getloadavg())}
    result = {
        "model": {"dir": str(args.model_dir), "checkpoint": str(args.torch), "real_text_dir": str(args.real_text)},
        "tuned": {"choice": described["choice"], "picked_by": described["picked_by"]},
        "skipped": skipped,
        "cpu_class": cpu_class(),
        "load_average": load,
        "rows": rows,
        "text_rows": text,
        "targets": targets,
    }
    markdown = harness.table(rows, COLUMNS)
    if text:
        markdown += f"\n\nReal text, {args.texts} paragraphs, docs/s:\n\n" + harness.table(text, TEXT_COLUMNS)
    markdown += "\n\n" + harness.table(targets, TARGET_COLUMNS)
    label = (
        f"Issue 19's targets: Encoder(DIR) runs {described['choice']} ({described['picked_by']}); all outputs, "
        f"interleaved, threads {args.threads or 'default'}; load average {load['before'][0]:.2f} before, "
        f"{load['after'][0]:.2f} after; skipped here: {skipped or 'none'}"
    )
    harness.write(args.out, "targets", result, markdown, label)


if __name__ == "__main__":
    main()
