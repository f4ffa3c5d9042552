"""Optimum's ``ORTModelForFeatureExtraction`` beside PyTorch and our runtime, in one process, interleaved.

    python -m benchmarks.peers --checkpoint CKPT --model-dir DIR [--texts 1000] [--repeats 3]

Optimum cannot be installed beside our export tools: optimum-onnx 0.1.0 requires ``transformers<4.58`` and our
``[export]`` extra requires transformers 5. Our *runtime* needs neither, so this runs in a separate environment
(``benchmarks/peers-requirements.txt``: torch, transformers 4.57, optimum-onnx, onnxruntime) with ``bert_onnx`` on
``PYTHONPATH``, against a folder DIR exported beforehand by ``bert-onnx export CKPT --variants fp32,opt,int8``:

    python -m venv /tmp/peers && /tmp/peers/bin/pip install -r benchmarks/peers-requirements.txt
    PYTHONPATH=. /tmp/peers/bin/python -m benchmarks.peers --checkpoint CKPT --model-dir DIR

Engines embed the same real paragraphs (mean pooling, normalized, batches of 32): PyTorch eager in input order and
length-sorted, Optimum (exported here by its own exporter, default options, length-sorted batches, which is its
best case; its model returns ``last_hidden_state`` only) and every CPU variant of ours (all outputs available),
timed, compared and tabled as ``benchmarks.corpus`` does (:func:`benchmarks.corpus.docs_rows`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.corpus import BATCH, COLUMNS, PYTORCH, PYTORCH_SORTED, docs_rows

PACKAGES = ("torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "tokenizers")


def _mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    vectors = (states * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _batched(
    texts: list[str], order: list[int], tokenizer: Any, forward: Callable[[dict[str, Any]], np.ndarray], dim: int
) -> np.ndarray:
    result = np.empty((len(texts), dim), dtype=np.float32)
    for start in range(0, len(order), BATCH):
        rows = order[start : start + BATCH]
        batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=512, return_tensors="np")
        result[rows] = _mean_pool(forward(batch), batch["attention_mask"])
    return result


def engines(checkpoint: Path, model_dir: Path, workdir: Path, threads: int) -> dict[str, Callable[[list[str]], Any]]:
    import torch
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoModel, AutoTokenizer

    from bert_onnx.runtime import Encoder

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModel.from_pretrained(checkpoint, attn_implementation="eager").eval()
    dim = model.config.hidden_size

    def torch_forward(batch: dict[str, Any]) -> np.ndarray:
        with torch.no_grad():
            return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()

    optimum_dir = workdir / "optimum"
    ORTModelForFeatureExtraction.from_pretrained(checkpoint, export=True).save_pretrained(optimum_dir)
    from onnxruntime import SessionOptions

    options = SessionOptions()
    options.intra_op_num_threads = threads
    optimum = ORTModelForFeatureExtraction.from_pretrained(optimum_dir, session_options=options)

    def optimum_forward(batch: dict[str, Any]) -> np.ndarray:
        with torch.no_grad():
            out = optimum(**{k: torch.from_numpy(v) for k, v in batch.items()})
        return out.last_hidden_state.numpy()

    def by_length(texts: list[str]) -> list[int]:
        return sorted(range(len(texts)), key=lambda i: len(texts[i]))

    found: dict[str, Callable[[list[str]], Any]] = {
        PYTORCH: lambda t: _batched(t, list(range(len(t))), tokenizer, torch_forward, dim),
        PYTORCH_SORTED: lambda t: _batched(t, by_length(t), tokenizer, torch_forward, dim),
        "optimum-ort-length-sorted": lambda t: _batched(t, by_length(t), tokenizer, optimum_forward, dim),
    }
    for variant in harness.cpu_graphs(model_dir):
        encoder = Encoder(model_dir, threads=threads, variant=variant)
        found[f"bert-onnx-{variant}"] = partial(encoder.embed, pooling="mean", normalize=True, batch_size=BATCH)
    return found


def run(checkpoint: Path, model_dir: Path, count: int, repeats: int, threads: int) -> list[dict[str, Any]]:
    from bert_onnx.export.corpus import documentation_paragraphs

    texts = list(documentation_paragraphs())[:count]
    with tempfile.TemporaryDirectory() as tmp:
        return docs_rows(engines(checkpoint, model_dir, Path(tmp), threads), texts, repeats, threads)


def main() -> None:
    parser = harness.arguments(__doc__, checkpoint="required", repeats=3)
    parser.add_argument("--texts", type=int, default=1000)
    args = parser.parse_args()
    rows = run(args.checkpoint, args.model_dir, args.texts, args.repeats, args.threads)
    result = {"model": {"checkpoint": str(args.checkpoint), "label": args.label}, "rows": rows}
    harness.write(args.out, "peers", result, harness.table(rows, COLUMNS), args.label, PACKAGES)


if __name__ == "__main__":
    main()
