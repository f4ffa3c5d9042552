"""CUDA: the same numbers as PyTorch on the GPU provider, and no silent CPU fallback.

The GPU tests need onnxruntime-gpu with a working CUDA; where that is missing they skip and say why. The refusal
test runs exactly where they skip: on a CPU-only machine asking for CUDA must fail loudly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
from helpers import max_diffs, torch_reference

from bert_onnx import interface
from bert_onnx.runtime import Encoder, ProviderError

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA,
    reason=f"no CUDAExecutionProvider in this onnxruntime (available: {ort.get_available_providers()}); "
    "install bert-onnx[gpu] on a machine with a CUDA GPU",
)


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA; the refusal only happens without it")
def test_cuda_without_cuda_provider_is_refused(export_dir: Callable[[str], Path]) -> None:
    with pytest.raises(ProviderError, match=r"device='cuda' needs CUDAExecutionProvider.*available: .*CPU"):
        Encoder(export_dir("tiny"), device="cuda")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("key", ["minilm", pytest.param("base", marks=pytest.mark.slow)])
def test_cuda_matches_pytorch(key: str, export_dir: Callable[[str], Path], torch_model: Callable[[str], Any]) -> None:
    enc = Encoder(export_dir(key), device="cuda")
    assert enc.runner.session.get_providers()[0] == "CUDAExecutionProvider"
    out = enc.encode(["I love Korea", "A longer sentence with padding in the batch, and then some more words."])
    reference = torch_reference(torch_model(key), out.input_ids, out.attention_mask, out.token_type_ids)
    diffs = max_diffs(reference, out, out.attention_mask)
    assert max(diffs.values()) <= interface.FP32_TOLERANCE, diffs


@pytest.mark.gpu
@needs_cuda
def test_cuda_embed_matches_cpu(export_dir: Callable[[str], Path], encoder: Callable[[str], Any]) -> None:
    import numpy as np

    texts = ["I love Korea", "", "Seoul is large.", "emoji 🙂 and 中文"]
    gpu = Encoder(export_dir("minilm"), device="cuda").embed(texts, pooling="mean", layers=[-4, -3, -2, -1])
    cpu = encoder("minilm").embed(texts, pooling="mean", layers=[-4, -3, -2, -1])
    np.testing.assert_allclose(gpu, cpu, atol=1e-4, rtol=0)


@pytest.mark.gpu
@needs_cuda
def test_verify_and_tune_on_cuda(export_dir: Callable[[str], Path], tmp_path: Path) -> None:
    from bert_onnx import tuning

    folder = export_dir("tiny")
    outcomes = {o.name: o for o in tuning.verify(folder, device="cuda")}
    assert outcomes["fp32"].passed, outcomes["fp32"].record
    assert outcomes["openvino-fp32"].skipped == "OpenVINO runs on the CPU only"
    timed, _, pick = tuning.tune(folder, device="cuda", rounds=1, sample=4, profile_dir=tmp_path)
    assert pick.name == "fp32" and {o.name: o for o in timed}["fp32"].texts_per_second
