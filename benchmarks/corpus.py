"""Docs/s on real text: PyTorch the tutorial's way and sorted, against every variant of our runtime and OpenVINO.

    python -m benchmarks.corpus --model-dir DIR --checkpoint CKPT [--texts 1000] [--repeats 3]

The corpus is Python's reference documentation (``pydoc_data.topics``, shipped with CPython: text no one here
wrote). OpenVINO rows (fp32, and bf16 where the CPU has bf16 units) appear when ``bert-onnx[openvino]`` is
installed. Every engine embeds the same texts (mean pooling, normalized, batches of 32); repeats alternate the engine
order. Rows: docs/s median, ratios to PyTorch eager in input order and to PyTorch length-sorted, and each engine's
mean/min cosine to PyTorch fp32 and top-10 neighbour agreement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.latency import openvino_precisions
from benchmarks.results_io import write_results

BATCH = 32


def _engines(model_dir: Path, checkpoint: Path, threads: int) -> dict[str, Callable[[list[str]], np.ndarray]]:
    import torch
    from transformers import BertTokenizer

    from bert_onnx.export.graph import load_model
    from bert_onnx.manifest import Manifest
    from bert_onnx.runtime import Encoder

    torch.set_num_threads(threads)
    model, _ = load_model(checkpoint)
    tokenizer = BertTokenizer.from_pretrained(checkpoint)

    def torch_embed(texts: list[str], order: list[int]) -> np.ndarray:
        result = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad():
                states = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            vectors = (states * mask).sum(1) / mask.sum(1)
            result[rows] = torch.nn.functional.normalize(vectors, dim=-1).numpy()
        return result

    engines: dict[str, Callable[[list[str]], np.ndarray]] = {
        "pytorch-eager-input-order": lambda texts: torch_embed(texts, list(range(len(texts)))),
        "pytorch-eager-length-sorted": lambda texts: torch_embed(
            texts, sorted(range(len(texts)), key=lambda i: len(texts[i]))
        ),
    }
    for variant in Manifest.read(model_dir).variants:
        if variant in ("fp32", "opt", "int8"):
            engines[f"bert-onnx-{variant}"] = partial(
                Encoder(model_dir, threads=threads, variant=variant).embed,
                pooling="mean",
                normalize=True,
                batch_size=BATCH,
            )
    for precision in openvino_precisions():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a gate not recorded at export: measured here instead
            openvino = Encoder(model_dir, threads=threads, backend="openvino", precision=precision)
        engines[f"openvino-{precision}"] = partial(openvino.embed, pooling="mean", normalize=True, batch_size=BATCH)
    return engines


def run(model_dir: Path, checkpoint: Path, count: int, repeats: int, threads: int) -> list[dict[str, Any]]:
    from bert_onnx.export.corpus import split
    from bert_onnx.gates import embedding_quality

    texts, _ = split(count, seed=1)
    engines = _engines(model_dir, checkpoint, threads)
    names = list(engines)
    times: dict[str, list[float]] = {name: [] for name in names}
    vectors: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            vectors[name] = engines[name](texts)
            times[name].append(time.perf_counter() - started)
    reference = vectors["pytorch-eager-input-order"].astype(np.float64)
    eager = statistics.median(times["pytorch-eager-input-order"])
    eager_sorted = statistics.median(times["pytorch-eager-length-sorted"])
    rows = []
    for name in names:
        median = statistics.median(times[name])
        quality = embedding_quality(reference, vectors[name].astype(np.float64))
        rows.append(
            {
                "engine": name,
                "texts": len(texts),
                "threads": threads,
                "repeats": repeats,
                "median_s": median,
                "docs_per_s": len(texts) / median,
                "x_pytorch_input_order": eager / median,
                "x_pytorch_length_sorted": eager_sorted / median,
                **{key.replace(" ", "_").replace("-", "_"): value for key, value in quality.items()},
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| engine | docs/s | × PyTorch input order | × PyTorch sorted | mean cos | min cos | top-10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['docs_per_s']:.1f} | {r['x_pytorch_input_order']:.2f} | "
            f"{r['x_pytorch_length_sorted']:.2f} | {r['mean_cosine']:.5f} | {r['min_cosine']:.5f} | "
            f"{r['top_10_agreement']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint DIR was exported from")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = run(args.model_dir, args.checkpoint, args.texts, args.repeats, args.threads)
    result = {
        "model": {"dir": str(args.model_dir), "checkpoint": str(args.checkpoint), "label": args.label},
        "corpus": "pydoc_data.topics paragraphs (Python reference documentation)",
        "rows": rows,
    }
    write_results(args.out, "corpus", result, markdown(rows), args.label)


if __name__ == "__main__":
    main()
