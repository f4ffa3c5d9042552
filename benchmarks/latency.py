"""Our runtime (every variant the folder holds) against PyTorch eager, all outputs, same process, interleaved.

    python -m benchmarks.latency --model-dir DIR --checkpoint CKPT [--shapes 1x7 8x128] [--repeats 20]

DIR is a folder written by ``bert-onnx export CKPT``. Every repeat times each engine once, in alternating order,
on the same random ids (full attention mask), so drift on a noisy machine hits both engines alike. Both engines
return all 2 + N + 1 outputs. Writes a JSON file of numbers (one row per engine and shape) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results_io import write_results


def _engines(model_dir: Path, checkpoint: Path, threads: int) -> dict[str, Callable[[np.ndarray, np.ndarray], Any]]:
    import torch

    from bert_onnx.export.graph import load_model
    from bert_onnx.manifest import Manifest
    from bert_onnx.runtime import Encoder

    torch.set_num_threads(threads)
    model, _ = load_model(checkpoint)

    def pytorch_eager(ids: np.ndarray, mask: np.ndarray) -> Any:
        with torch.no_grad():
            return model(
                input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True
            )

    engines: dict[str, Callable[[np.ndarray, np.ndarray], Any]] = {"pytorch-eager": pytorch_eager}
    for variant, record in Manifest.read(model_dir).variants.items():
        if "cpu" in record.devices:
            engines[f"bert-onnx-{variant}"] = Encoder(model_dir, threads=threads, variant=variant).run
    return engines


def run(model_dir: Path, checkpoint: Path, shapes: list[tuple[int, int]], repeats: int, warmup: int, threads: int):
    engines = _engines(model_dir, checkpoint, threads)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(0)
    rows = []
    for batch, sequence in shapes:
        ids = rng.integers(1000, vocab, size=(batch, sequence), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        mask = np.ones_like(ids)
        times: dict[str, list[float]] = {name: [] for name in engines}
        names = list(engines)
        for repeat in range(warmup + repeats):
            for name in names if repeat % 2 == 0 else names[::-1]:
                started = time.perf_counter()
                engines[name](ids, mask)
                if repeat >= warmup:
                    times[name].append(time.perf_counter() - started)
        reference = statistics.median(times["pytorch-eager"])
        for name, samples in times.items():
            median = statistics.median(samples)
            rows.append(
                {
                    "engine": name,
                    "batch": batch,
                    "sequence": sequence,
                    "threads": threads,
                    "repeats": repeats,
                    "median_ms": median * 1e3,
                    "p90_ms": float(np.percentile(samples, 90)) * 1e3,
                    "sequences_per_s": batch / median,
                    "speedup_vs_pytorch_eager": reference / median,
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| engine | batch × seq | median ms | p90 ms | seq/s | × PyTorch eager |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['batch']} × {r['sequence']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
            f"{r['sequences_per_s']:.1f} | {r['speedup_vs_pytorch_eager']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint DIR was exported from")
    parser.add_argument("--shapes", nargs="+", default=["1x7", "8x128"], help="BATCHxSEQUENCE (default: 1x7 8x128)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--label", default="", help="what the weights are, e.g. 'bert-base shape, RANDOM weights'")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes]
    rows = run(args.model_dir, args.checkpoint, shapes, args.repeats, args.warmup, args.threads)  # type: ignore[arg-type]
    versions = {p: metadata.version(p) for p in ("torch", "transformers", "onnxruntime", "numpy")}
    result = {
        "versions": versions,
        "model": {"dir": str(args.model_dir), "checkpoint": str(args.checkpoint), "label": args.label},
        "rows": rows,
    }
    write_results(args.out, "latency", result, markdown(rows), args.label)


if __name__ == "__main__":
    main()
