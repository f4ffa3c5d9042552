"""Docs/s on real text: PyTorch the tutorial's way and sorted, against every variant of our runtime and OpenVINO.

    python -m benchmarks.corpus --model-dir DIR --checkpoint CKPT [--texts 1000] [--repeats 3]

The corpus is Python's reference documentation (``pydoc_data.topics``, shipped with CPython: text no one here
wrote). OpenVINO rows (fp32, and bf16 where the CPU has bf16 units) appear when ``bert-onnx[openvino]`` is
installed. Every engine embeds the same texts (mean pooling, normalized, batches of 32); repeats alternate the engine
order (:func:`bert_onnx.timing.compare`, no warm-up round). Rows: docs/s median, ratios to PyTorch eager in input
order and to PyTorch length-sorted, and each engine's mean/min cosine to PyTorch fp32 and top-10 neighbour agreement.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import Column

BATCH = 32
PYTORCH, PYTORCH_SORTED = "pytorch-eager-input-order", "pytorch-eager-length-sorted"
COLUMNS = [
    Column("engine", "engine"),
    Column("docs/s", "docs_per_s", ".1f"),
    Column("× PyTorch input order", "x_pytorch_input_order", ".2f"),
    Column("× PyTorch sorted", "x_pytorch_length_sorted", ".2f"),
    Column("mean cos", "mean_cosine", ".5f"),
    Column("min cos", "min_cosine", ".5f"),
    Column("top-10", "top_10_agreement", ".3f"),
]


def _engines(model_dir: Path, checkpoint: Path, threads: int) -> dict[str, Callable[[list[str]], np.ndarray]]:
    import torch
    from transformers import BertTokenizer

    from bert_onnx.export.graph import load_model
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
        PYTORCH: lambda texts: torch_embed(texts, list(range(len(texts)))),
        PYTORCH_SORTED: lambda texts: torch_embed(texts, sorted(range(len(texts)), key=lambda i: len(texts[i]))),
    }
    for variant in harness.cpu_graphs(model_dir):
        encoder = Encoder(model_dir, threads=threads, variant=variant)
        engines[f"bert-onnx-{variant}"] = partial(encoder.embed, pooling="mean", normalize=True, batch_size=BATCH)
    for precision in harness.openvino_precisions():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a gate not recorded at export: measured here instead
            openvino = Encoder(model_dir, threads=threads, backend="openvino", precision=precision)
        engines[f"openvino-{precision}"] = partial(openvino.embed, pooling="mean", normalize=True, batch_size=BATCH)
    return engines


def docs_rows(
    engines: Mapping[str, Callable[[list[str]], np.ndarray]], texts: list[str], repeats: int, threads: int
) -> list[dict[str, Any]]:
    """Time every engine on ``texts`` (interleaved, no warm-up round, as this benchmark always has) and compare its
    vectors with PyTorch's in input order: docs/s, × both PyTorch orders, cosines and top-10 agreement."""
    timings, vectors = harness.compare_outputs(
        {name: partial(engine, texts) for name, engine in engines.items()}, repeats, warmup=0
    )
    reference = np.asarray(vectors[PYTORCH], dtype=np.float64)
    rows = []
    for name, measured in timings.items():
        row: dict[str, Any] = {"engine": name, "texts": len(texts), "threads": threads}
        row.update(harness.timing_row(measured, len(texts), "docs"))
        row["x_pytorch_input_order"] = harness.ratio(timings, name, PYTORCH)
        row["x_pytorch_length_sorted"] = harness.ratio(timings, name, PYTORCH_SORTED)
        row.update(quality_columns(reference, np.asarray(vectors[name], dtype=np.float64)))
        rows.append(row)
    return rows


def quality_columns(reference: np.ndarray, vectors: np.ndarray) -> dict[str, float]:
    from bert_onnx.gates import embedding_quality

    found = embedding_quality(reference, vectors)
    return {key.replace(" ", "_").replace("-", "_"): value for key, value in found.items()}


def run(model_dir: Path, checkpoint: Path, count: int, repeats: int, threads: int) -> list[dict[str, Any]]:
    from bert_onnx.export.corpus import split

    texts, _ = split(count, seed=1)
    return docs_rows(_engines(model_dir, checkpoint, threads), texts, repeats, threads)


def main() -> None:
    parser = harness.arguments(__doc__, checkpoint="required", repeats=3)
    parser.add_argument("--texts", type=int, default=1000)
    args = parser.parse_args()
    rows = run(args.model_dir, args.checkpoint, args.texts, args.repeats, args.threads)
    result = {
        "model": {"dir": str(args.model_dir), "checkpoint": str(args.checkpoint), "label": args.label},
        "corpus": "pydoc_data.topics paragraphs (Python reference documentation)",
        "rows": rows,
    }
    harness.write(args.out, "corpus", result, harness.table(rows, COLUMNS), args.label)


if __name__ == "__main__":
    main()
