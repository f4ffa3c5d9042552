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


def _cpu_args(folder: Path, variants: list[str], shapes: list[tuple[int, int]]) -> argparse.Namespace:
    """benchmarks.cuda's options for one quick round on the CPU with the tiny checkpoint."""
    return argparse.Namespace(
        model_dir=folder,
        checkpoint=checkpoint_path("tiny"),
        device="cpu",
        variants=variants,
        shapes=shapes,
        repeats=1,
        warmup=1,
        min_seconds=0.0,
    )


def test_cuda_benchmark_runs_on_the_cpu_and_names_what_it_cannot_run(export_dir: Callable[[str], Path]) -> None:
    from benchmarks import cuda

    args = _cpu_args(export_dir("tiny"), ["fp32"], [(2, 8)])
    rows = {row["engine"]: row for row in cuda.run(args)}
    timed = [
        "pytorch-fp32-sdpa",
        "pytorch-fp32-sdpa last+pooler",
        "bert-onnx-fp32",
        "bert-onnx-fp32 last+pooler",
        "ort-bound-fp32 fp16 outputs",
    ]
    need_cuda = ["ort-cuda-graph-fp32 last+pooler", "ort-cuda-graph-fp32", "ort-bound-fp32 pinned outputs"]
    assert sorted(rows) == sorted(timed + need_cuda)
    for name in timed:
        assert rows[name]["median_ms"] > 0 and rows[name]["x_pytorch"] > 0, rows[name]
    assert rows["pytorch-fp32-sdpa"]["x_pytorch"] == 1.0  # each engine against PyTorch with the same outputs
    # every output over the same runtime's last+pooler: ours over ours, PyTorch's over PyTorch's
    ours = rows["bert-onnx-fp32"]["median_ms"] / rows["bert-onnx-fp32 last+pooler"]["median_ms"]
    assert rows["bert-onnx-fp32"]["over_last_and_pooler"] == pytest.approx(ours)
    assert "over_last_and_pooler" not in rows["bert-onnx-fp32 last+pooler"]
    for name in need_cuda:
        assert rows[name]["skipped"] == "CUDA graphs and pinned host buffers need --device cuda", rows[name]


@pytest.mark.parametrize("every_output", [False, True])
@pytest.mark.parametrize("fp16_outputs", [False, True])
def test_bound_buffers_return_the_encoders_values(
    export_dir: Callable[[str], Path], every_output: bool, fp16_outputs: bool
) -> None:
    """The fixed-buffer binding the CUDA-graph and fp16-output rows time, bound in host memory on the CPU provider,
    returns what Encoder returns for the same ids (to float16's rounding where the graph casts its outputs)."""
    from benchmarks import cuda
    from bert_onnx.runtime import Encoder

    folder = export_dir("tiny")
    ids = np.random.default_rng(0).integers(1000, 5000, (3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    got = cuda.bound_engine(
        folder, "fp32", ids, mask, device="cpu", every_output=every_output, fp16_outputs=fp16_outputs
    )()
    encoded = Encoder(folder, variant="fp32").run(ids, mask, output_hidden_states=every_output)
    expected = [encoded.last_hidden_state, encoded.pooler_output, *(encoded.hidden_states if every_output else [])]
    assert len(got) == len(expected)
    for value, reference in zip(got, expected, strict=True):
        assert value.dtype == (np.float16 if fp16_outputs else np.float32)
        assert value.shape == reference.shape
        np.testing.assert_allclose(
            value, reference, rtol=1e-3 if fp16_outputs else 0, atol=1e-3 if fp16_outputs else 1e-6
        )


def test_a_bound_engine_refuses_a_graph_the_folder_lacks(export_dir: Callable[[str], Path]) -> None:
    from benchmarks import cuda

    ids = np.ones((1, 4), dtype=np.int64)
    with pytest.raises(RuntimeError, match="holds no fp16 graph"):
        cuda.bound_engine(export_dir("tiny"), "fp16", ids, ids, device="cpu")


def test_an_engine_that_fails_is_a_row_with_its_reason_not_a_crash(
    export_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """GPU time is short: one engine raising (here a stand-in for a CUDA error) must not lose the other rows."""
    from benchmarks import cuda

    def broken() -> None:
        raise ValueError("out of device memory")

    real = cuda.encoder_engines
    monkeypatch.setattr(cuda, "encoder_engines", lambda *a: {**real(*a), "broken": broken})
    args = _cpu_args(export_dir("tiny"), ["fp32"], [(1, 8)])
    rows = {row["engine"]: row for row in cuda.run(args)}
    assert rows["broken"]["skipped"] == "failed: ValueError: out of device memory"
    assert rows["bert-onnx-fp32"]["median_ms"] > 0


def test_a_variant_the_folder_lacks_is_a_row_with_its_reason(export_dir: Callable[[str], Path]) -> None:
    from benchmarks import cuda

    args = _cpu_args(export_dir("tiny"), ["fp16", "fp32"], [(1, 8)])
    rows = {row["engine"]: row for row in cuda.run(args)}
    assert rows["bert-onnx-fp16"]["skipped"].startswith("failed: "), rows["bert-onnx-fp16"]
    assert "holds no fp16 graph" in rows["ort-bound-fp16 fp16 outputs"]["skipped"]
    assert rows["bert-onnx-fp32"]["median_ms"] > 0 and rows["ort-bound-fp32 fp16 outputs"]["median_ms"] > 0
