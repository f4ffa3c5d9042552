"""Our runtime (every CPU variant the folder holds) against PyTorch eager, all outputs, same process, interleaved.

    python -m benchmarks.latency --model-dir DIR --checkpoint CKPT [--shapes 1x7 8x128 | --grid] [--repeats 20]

DIR is a folder written by ``bert-onnx export CKPT``. ``--grid`` adds batch {1, 8, 32} × sequence {8, 32, 128, 512}
after the ``--shapes`` (default: the two target shapes, 1×7 and 8×128). Every repeat times each engine once, in
alternating order, on the same random ids (full attention mask), so drift on a noisy machine hits every engine
alike; a shape gets fewer repeats (at least 3) when one round of all engines takes longer than ``--budget`` /
``--repeats`` seconds.
Every engine returns all 2 + N + 1 outputs. Peak RSS is measured per engine in a subprocess of its own (load, then
one run of the largest shape), so one engine's memory does not hide another's.

Writes JSON (machine, versions, one row per engine and shape), a Markdown table and, with ``--plot``, a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results_io import vm_hwm_mb, write_results

GRID = [(b, s) for b in (1, 8, 32) for s in (8, 32, 128, 512)]
PYTORCH = "pytorch-eager"

Engine = Callable[[np.ndarray, np.ndarray], Any]


def engine_names(model_dir: Path) -> list[str]:
    from bert_onnx.manifest import Manifest

    variants = Manifest.read(model_dir).variants
    names = [PYTORCH] + (["pytorch-bf16-autocast"] if has_bf16_units() else [])
    names += [f"bert-onnx-{v}" for v, record in variants.items() if v in ("fp32", "opt", "int8")]
    return names + [f"openvino-{p}" for p in openvino_precisions()]


def has_bf16_units() -> bool:
    """PyTorch bf16 autocast is only worth a row where the CPU has bf16 units; elsewhere it is emulated, slowly."""
    from benchmarks.results_io import cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def openvino_precisions() -> list[str]:
    from bert_onnx.runtime.openvino_backend import cpu_capabilities

    try:
        return ["fp32", "bf16"] if "BF16" in cpu_capabilities() else ["fp32"]
    except RuntimeError:  # openvino not installed
        return []


def make_engine(name: str, model_dir: Path, checkpoint: Path, threads: int) -> Engine:
    if name.startswith("pytorch"):
        import contextlib

        import torch

        from bert_onnx.export.graph import load_model

        torch.set_num_threads(threads)
        model, _ = load_model(checkpoint)
        bf16 = name == "pytorch-bf16-autocast"

        def pytorch_eager(ids: np.ndarray, mask: np.ndarray) -> Any:
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with torch.no_grad(), autocast:
                return model(
                    input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True
                )

        return pytorch_eager
    import warnings

    from bert_onnx.runtime import Encoder

    if name.startswith("openvino-"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a gate not recorded at export: speed only here
            return Encoder(model_dir, threads=threads, backend="openvino", precision=name.split("-")[1]).run
    return Encoder(model_dir, threads=threads, variant=name.removeprefix("bert-onnx-")).run


def _inputs(rng: np.random.Generator, vocab: int, batch: int, sequence: int) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(1000, vocab, size=(batch, sequence), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, np.ones_like(ids)


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
        ids, mask = _inputs(rng, vocab, batch, sequence)
        times: dict[str, list[float]] = {name: [] for name in names}
        planned, repeat = warmup + repeats, 0
        while repeat < planned:
            started_round = time.perf_counter()
            for name in names if repeat % 2 == 0 else names[::-1]:
                started = time.perf_counter()
                engines[name](ids, mask)
                if repeat >= warmup:
                    times[name].append(time.perf_counter() - started)
            if repeat == 0:  # one round's cost is known: fit the remaining repeats into the budget
                per_round = time.perf_counter() - started_round
                planned = warmup + max(3, min(repeats, int(budget / per_round)))
            repeat += 1
        reference = statistics.median(times[PYTORCH])
        for name, samples in times.items():
            median = statistics.median(samples)
            rows.append(
                {
                    "engine": name,
                    "batch": batch,
                    "sequence": sequence,
                    "threads": threads,
                    "repeats": len(samples),
                    "median_ms": median * 1e3,
                    "p99_ms": float(np.percentile(samples, 99)) * 1e3,
                    "sequences_per_s": batch / median,
                    "tokens_per_s": batch * sequence / median,
                    "speedup_vs_pytorch_eager": reference / median,
                }
            )
        print(f"{batch}×{sequence}: {len(times[PYTORCH])} repeats", file=sys.stderr, flush=True)
    return rows


def peak_rss(name: str, model_dir: Path, checkpoint: Path, threads: int, shape: tuple[int, int]) -> float:
    """Peak RSS in MB of a fresh process that loads one engine and runs ``shape`` once."""
    command = [sys.executable, "-m", "benchmarks.latency", "--model-dir", str(model_dir), "--checkpoint"]
    command += [
        str(checkpoint),
        "--threads",
        str(threads),
        "--peak-rss-of",
        name,
        "--shapes",
        "x".join(map(str, shape)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def markdown(rows: list[dict[str, Any]], rss: dict[str, float]) -> str:
    lines = [
        "| engine | batch × seq | median ms | p99 ms | n | seq/s | tokens/s | × PyTorch eager |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['batch']} × {r['sequence']} | {r['median_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['repeats']} | {r['sequences_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{r['speedup_vs_pytorch_eager']:.2f} |"
        )
    if rss:
        lines += ["", "| engine | peak RSS MB (load + one run of the largest shape) |", "|---|---|"]
        lines += [f"| {name} | {mb:.0f} |" for name, mb in rss.items()]
    return "\n".join(lines)


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint DIR was exported from")
    parser.add_argument("--shapes", nargs="+", default=["1x7", "8x128"], help="BATCHxSEQUENCE (default: 1x7 8x128)")
    parser.add_argument("--grid", action="store_true", help="add batch {1, 8, 32} × sequence {8, 32, 128, 512}")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of timed repeats per shape, about")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-rss", action="store_true", help="skip the per-engine peak RSS subprocesses")
    parser.add_argument("--plot", action="store_true", help="also write a PNG of tokens/s per shape")
    parser.add_argument("--label", default="", help="what the weights are, e.g. 'bert-base shape, RANDOM weights'")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--peak-rss-of", help=argparse.SUPPRESS)  # internal: the per-engine subprocess
    args = parser.parse_args()
    shapes = list(dict.fromkeys([_shape(s) for s in args.shapes] + (GRID if args.grid else [])))
    if args.peak_rss_of:
        engine = make_engine(args.peak_rss_of, args.model_dir, args.checkpoint, args.threads)
        batch, sequence = shapes[0]
        vocab = json.loads((args.model_dir / "config.json").read_text())["vocab_size"]
        engine(*_inputs(np.random.default_rng(0), vocab, batch, sequence))
        print(json.dumps({"peak_rss_mb": vm_hwm_mb()}))
        return
    rows = run(args.model_dir, args.checkpoint, shapes, args.repeats, args.warmup, args.threads, args.budget)
    largest = max(shapes, key=lambda s: s[0] * s[1])
    rss = (
        {}
        if args.no_rss
        else {
            n: peak_rss(n, args.model_dir, args.checkpoint, args.threads, largest) for n in engine_names(args.model_dir)
        }
    )
    versions = {p: metadata.version(p) for p in ("torch", "transformers", "onnxruntime", "numpy")}
    result = {
        "versions": versions,
        "model": {"dir": str(args.model_dir), "checkpoint": str(args.checkpoint), "label": args.label},
        "rows": rows,
        "peak_rss_mb": {"shape": list(largest), **rss},
    }
    path = write_results(args.out, "latency", result, markdown(rows, rss), args.label)
    if args.plot:
        plot(rows, path.with_suffix(".png"), args.label)


if __name__ == "__main__":
    main()
