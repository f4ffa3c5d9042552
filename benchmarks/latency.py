"""Our runtime (every CPU variant the folder holds) against PyTorch eager, all outputs, same process, interleaved.

    python -m benchmarks.latency --model-dir DIR --checkpoint CKPT [--shapes 1x7 8x128 | --grid] [--repeats 20]

DIR is a folder written by ``bert-onnx export CKPT``. ``--grid`` adds batch {1, 8, 32} × sequence {8, 32, 128, 512}
after the ``--shapes`` (default: the two target shapes, 1×7 and 8×128). Every repeat times each engine once, in
alternating order, on the same random ids (full attention mask), so drift on a noisy machine hits every engine
alike; a shape gets fewer repeats (at least 3) when one round of all engines takes longer than ``--budget`` /
``--repeats`` seconds (:func:`bert_onnx.timing.compare`).
Every engine returns all 2 + N + 1 outputs. Peak RSS is measured per engine in a subprocess of its own (load, then
one run of the largest shape), so one engine's memory does not hide another's.

Writes JSON (machine, versions, one row per engine and shape), a Markdown table and, with ``--plot``, a PNG.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import Column
from benchmarks.results_io import vm_hwm_mb
from bert_onnx import timing

GRID = [(b, s) for b in (1, 8, 32) for s in (8, 32, 128, 512)]
PYTORCH = "pytorch-eager"

Engine = harness.Forward
COLUMNS = [
    Column("engine", "engine"),
    harness.SHAPE_COLUMN,
    *harness.TIMING_COLUMNS,
    Column("seq/s", "sequences_per_s", ".1f"),
    Column("tokens/s", "tokens_per_s", ".0f"),
    Column("× PyTorch eager", "speedup_vs_pytorch_eager", ".2f"),
]


def engine_names(model_dir: Path) -> list[str]:
    names = [PYTORCH] + (["pytorch-bf16-autocast"] if harness.has_bf16_units() else [])
    names += [f"bert-onnx-{v}" for v in harness.cpu_graphs(model_dir)]
    return names + [f"openvino-{p}" for p in harness.openvino_precisions()]


def make_engine(name: str, model_dir: Path, checkpoint: Path, threads: int) -> Engine:
    if name.startswith("pytorch"):
        return harness.pytorch_engine(checkpoint, threads, bf16=name == "pytorch-bf16-autocast")
    import warnings

    from bert_onnx.runtime import Encoder

    if name.startswith("openvino-"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a gate not recorded at export: speed only here
            return Encoder(model_dir, threads=threads, backend="openvino", precision=name.split("-")[1]).run
    return Encoder(model_dir, threads=threads, variant=name.removeprefix("bert-onnx-")).run


def run(
    model_dir: Path,
    checkpoint: Path,
    shapes: list[tuple[int, int]],
    repeats: int,
    warmup: int,
    threads: int,
    budget: float,
) -> list[dict[str, Any]]:
    names = engine_names(model_dir)
    engines = {name: make_engine(name, model_dir, checkpoint, threads) for name in names}
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(0)
    rows = []
    for batch, sequence in shapes:
        ids, mask = harness.random_inputs(rng, vocab, batch, sequence)
        timings = timing.compare(
            {name: partial(engine, ids, mask) for name, engine in engines.items()},
            repeats,
            warmup=warmup,
            budget_seconds=budget,
        )
        for name, measured in timings.items():
            row = {"engine": name, "batch": batch, "sequence": sequence, "threads": threads}
            row.update(harness.timing_row(measured, batch, per="sequences"))
            row["tokens_per_s"] = measured.rate(batch * sequence)
            row["speedup_vs_pytorch_eager"] = harness.ratio(timings, name, PYTORCH)
            rows.append(row)
        harness.note(f"{batch}×{sequence}: {timings[PYTORCH].rounds} repeats")
    return rows


def peak_rss(name: str, model_dir: Path, checkpoint: Path, threads: int, shape: tuple[int, int]) -> float:
    """Peak RSS in MB of a fresh process that loads one engine and runs ``shape`` once."""
    command = [sys.executable, "-m", "benchmarks.latency", "--model-dir", str(model_dir), "--checkpoint"]
    command += [str(checkpoint), "--threads", str(threads), "--peak-rss-of", name]
    command += ["--shapes", "x".join(map(str, shape))]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def markdown(rows: list[dict[str, Any]], rss: dict[str, float]) -> str:
    text = harness.table(rows, COLUMNS)
    if rss:
        rss_rows = [{"engine": name, "mb": mb} for name, mb in rss.items()]
        columns = [Column("engine", "engine"), Column("peak RSS MB (load + one run of the largest shape)", "mb", ".0f")]
        text += "\n\n" + harness.table(rss_rows, columns)
    return text


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    figure, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for axis, batch in zip(axes[0], batches, strict=True):
        for engine in dict.fromkeys(r["engine"] for r in rows):
            points = sorted(
                (r["sequence"], r["tokens_per_s"]) for r in rows if r["batch"] == batch and r["engine"] == engine
            )
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=engine)
        axis.set(
            title=f"batch {batch}", xlabel="sequence length (tokens)", ylabel="tokens/s", xscale="log", yscale="log"
        )
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].legend()
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _shape(text: str) -> tuple[int, int]:
    batch, sequence = text.lower().split("x")
    return int(batch), int(sequence)


def main() -> None:
    parser = harness.arguments(__doc__, checkpoint="required", repeats=20)
    parser.add_argument("--shapes", nargs="+", default=["1x7", "8x128"], help="BATCHxSEQUENCE (default: 1x7 8x128)")
    parser.add_argument("--grid", action="store_true", help="add batch {1, 8, 32} × sequence {8, 32, 128, 512}")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of timed repeats per shape, about")
    parser.add_argument("--no-rss", action="store_true", help="skip the per-engine peak RSS subprocesses")
    parser.add_argument("--plot", action="store_true", help="also write a PNG of tokens/s per shape")
    parser.add_argument("--peak-rss-of", help=argparse.SUPPRESS)  # internal: the per-engine subprocess
    args = parser.parse_args()
    shapes = list(dict.fromkeys([_shape(s) for s in args.shapes] + (GRID if args.grid else [])))
    if args.peak_rss_of:
        engine = make_engine(args.peak_rss_of, args.model_dir, args.checkpoint, args.threads)
        batch, sequence = shapes[0]
        vocab = json.loads((args.model_dir / "config.json").read_text())["vocab_size"]
        engine(*harness.random_inputs(np.random.default_rng(0), vocab, batch, sequence))
        print(json.dumps({"peak_rss_mb": vm_hwm_mb()}))
        return
    rows = run(args.model_dir, args.checkpoint, shapes, args.repeats, args.warmup, args.threads, args.budget)
    largest = max(shapes, key=lambda s: s[0] * s[1])
    names = [] if args.no_rss else engine_names(args.model_dir)
    rss = {n: peak_rss(n, args.model_dir, args.checkpoint, args.threads, largest) for n in names}
    result = {
        "model": {"dir": str(args.model_dir), "checkpoint": str(args.checkpoint), "label": args.label},
        "rows": rows,
        "peak_rss_mb": {"shape": list(largest), **rss},
    }
    path = harness.write(args.out, "latency", result, markdown(rows, rss), args.label)
    if args.plot:
        plot(rows, path.with_suffix(".png"), args.label)


if __name__ == "__main__":
    main()
