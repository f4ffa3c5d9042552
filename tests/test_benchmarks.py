"""The benchmark scripts a GPU session runs in one go (`scripts/gpu_check.sh`) work before GPU time is spent on them:
run here on the CPU with the tiny checkpoint, they time every engine, and the rows they cannot run say why."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import checkpoint_path

pytestmark = pytest.mark.fast


def test_cuda_benchmark_runs_on_the_cpu_and_names_what_it_cannot_run(export_dir: Callable[[str], Path]) -> None:
    from benchmarks import cuda

    args = argparse.Namespace(
        model_dir=export_dir("tiny"),
        checkpoint=checkpoint_path("tiny"),
        device="cpu",
        variants=["fp32"],
        shapes=[(2, 8)],
        repeats=1,
        warmup=1,
        min_seconds=0.0,
    )
    rows = {row["engine"]: row for row in cuda.run(args)}
    timed = ["pytorch-fp32-sdpa", "pytorch-fp32-sdpa last+pooler", "bert-onnx-fp32", "bert-onnx-fp32 last+pooler"]
    assert sorted(rows) == sorted([*timed, "ort-cuda-graph-fp32 last+pooler"])
    for name in timed:
        assert rows[name]["median_ms"] > 0 and rows[name]["x_pytorch"] > 0, rows[name]
    assert rows["pytorch-fp32-sdpa"]["x_pytorch"] == 1.0  # each engine against PyTorch with the same outputs
    assert rows["ort-cuda-graph-fp32 last+pooler"]["skipped"] == "CUDA graphs need --device cuda"


def test_cuda_graph_buffers_return_the_encoders_values(export_dir: Callable[[str], Path]) -> None:
    """The fixed-buffer binding the CUDA-graph rows time, bound in host memory on the CPU provider, returns what
    Encoder returns for the same ids."""
    from benchmarks import cuda
    from bert_onnx.runtime import Encoder

    folder = export_dir("tiny")
    ids = np.random.default_rng(0).integers(1000, 5000, (3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    last, pooler = cuda.cuda_graph_engine(folder, "fp32", ids, mask, device="cpu")()
    expected = Encoder(folder, variant="fp32").run(ids, mask, output_hidden_states=False)
    np.testing.assert_allclose(last, expected.last_hidden_state, atol=1e-6)
    np.testing.assert_allclose(pooler, expected.pooler_output, atol=1e-6)


def test_cuda_graph_engine_refuses_a_graph_the_folder_lacks(export_dir: Callable[[str], Path]) -> None:
    from benchmarks import cuda

    ids = np.ones((1, 4), dtype=np.int64)
    with pytest.raises(RuntimeError, match="holds no fp16 graph"):
        cuda.cuda_graph_engine(export_dir("tiny"), "fp16", ids, ids)
