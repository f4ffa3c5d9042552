"""Variants (opt, int8, fp16): built at export, each behind its own gate, chosen by the runtime per device."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from conftest import checkpoint_path, max_diffs, torch_reference

from bert_onnx import interface
from bert_onnx.export import ExportError, export_model
from bert_onnx.export.errors import VariantGateError
from bert_onnx.manifest import Manifest, ModelFolderError
from bert_onnx.runtime import Encoder

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_manifest_records_every_variant_and_its_gate(variants_dir: Path) -> None:
    manifest = Manifest.read(variants_dir)
    assert list(manifest.variants) == ["fp32", "opt", "int8"]
    for name, record in manifest.variants.items():
        assert record.file == interface.VARIANT_FILES[name]
        assert record.passed and record.checks
        assert (variants_dir / record.file).is_file()
    manifest.verify_files(variants_dir)
    assert {c.name for c in manifest.variants["int8"].checks} == {"mean cosine", "min cosine", "top-10 agreement"}
    fused = manifest.extra["opt_fused_operators"]
    assert fused["Attention"] == 6 and fused["SkipLayerNormalization"] == 12
    assert "EmbedLayerNormalization" not in fused, "the embedding must not be computed twice"


def test_opt_matches_pytorch_on_every_output(variants_dir: Path, torch_model: Callable[[str], Any]) -> None:
    enc = Encoder(variants_dir, variant="opt")
    texts = ["I love Korea", "A longer sentence, so the batch has padding in it.", "word " * 600]
    out = enc.encode(texts)
    reference = torch_reference(torch_model("minilm"), out.input_ids, out.attention_mask, out.token_type_ids)
    diffs = max_diffs(reference, out, out.attention_mask)
    assert max(diffs.values()) <= interface.FP32_TOLERANCE, diffs


def test_int8_gate_reproduces_through_the_runtime(variants_dir: Path, torch_model: Callable[[str], Any]) -> None:
    """Re-measure the int8 gate on its corpus through Encoder.embed (runtime tokenizer, batching, pooling)
    against PyTorch fp32 computed here, and compare with what export recorded."""
    import torch
    from transformers import BertTokenizer

    from bert_onnx.export.corpus import split
    from bert_onnx.export.variants import GATE_TEXTS, INT8_GATE, embedding_quality

    texts, _ = split(GATE_TEXTS)
    tokenizer = BertTokenizer.from_pretrained(checkpoint_path("minilm"))
    model = torch_model("minilm")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths per batch: less padding
    reference = np.empty((len(texts), 384))
    for start in range(0, len(texts), 64):
        rows = order[start : start + 64]
        batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            states = model(**batch).last_hidden_state.numpy().astype(np.float64)
        mask = batch["attention_mask"].numpy()[:, :, None]
        vectors = (states * mask).sum(axis=1) / mask.sum(axis=1)
        reference[rows] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    int8 = Encoder(variants_dir, variant="int8").embed(texts, pooling="mean", normalize=True)
    quality = embedding_quality(reference, int8.astype(np.float64))
    recorded = {c.name: c.value for c in Manifest.read(variants_dir).variants["int8"].checks}
    for name, limit in INT8_GATE.items():
        assert quality[name] >= limit, (name, quality[name])
        assert quality[name] == pytest.approx(recorded[name], abs=5e-3), name


def test_default_variant_is_the_fastest_stored_for_the_device(
    variants_dir: Path, export_dir: Callable[[str], Path]
) -> None:
    assert Encoder(variants_dir).variant == "int8"
    assert Encoder(export_dir("tiny")).variant == "fp32"  # a folder exported without variants


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "bf16"}, "variant='bf16' is not one of fp32, opt, int8, fp16"),
        ({"variant": "fp16"}, r"variant='fp16' is not in .* \(it has fp32, opt, int8\); export it with --variants"),
        ({"variant": "int8", "device": "cuda"}, "variant='int8' runs on cpu, not device='cuda'"),
    ],
)
def test_variant_errors(variants_dir: Path, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Encoder(variants_dir, **kwargs)


def test_only_the_files_in_use_are_needed_intact(variants_dir: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(variants_dir, tmp_path / "model"))
    with open(folder / interface.VARIANT_FILES["int8"], "ab") as handle:
        handle.write(b"\x00")
    assert Encoder(folder, variant="fp32").embed(["ok"]).shape == (1, 384)
    with pytest.raises(ModelFolderError, match=r"model\.int8\.onnx: SHA-256 .* does not match"):
        Encoder(folder)


def test_unknown_variant_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown variant\\(s\\) 'int4'; choose from fp32, opt, int8, fp16"):
        export_model(str(checkpoint_path("tiny")), tmp_path / "out", variants=("fp32", "int4"), log=lambda m: None)


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA, so fp16 can be exported and gated here")
def test_fp16_without_cuda_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"fp16 variant is for CUDA and its gate runs on CUDA.*available: "):
        export_model(str(checkpoint_path("tiny")), tmp_path / "out", variants="fp16", log=lambda m: None)


def test_a_variant_that_misses_its_gate_fails_the_export_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bert_onnx.export import variants

    # A gate no quantized model can meet, standing in for a checkpoint that int8 damages.
    monkeypatch.setattr(variants, "INT8_GATE", {**variants.INT8_GATE, "min cosine": 1.5})
    with pytest.raises(VariantGateError, match=r"variant 'int8' failed its gate: min cosine") as caught:
        export_model(str(checkpoint_path("tiny")), tmp_path / "out", variants="int8", log=lambda m: None)
    assert [c.name for c in caught.value.record.failures] == ["min cosine"]
    assert list(tmp_path.iterdir()) == []


def test_cli_embed_with_a_variant(variants_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "texts.txt").write_text("I love Korea\nSeoul\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bert_onnx",
            "embed",
            str(variants_dir),
            "-i",
            str(tmp_path / "texts.txt"),
            "-o",
            str(tmp_path / "out.npy"),
            "--variant",
            "opt",
            "--pooling",
            "mean",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    expected = Encoder(variants_dir, variant="opt").embed(["I love Korea", "Seoul"], pooling="mean")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-6)


def test_int8_ladder_keeps_ffn_down_projections_float_from_the_first_layer(variants_dir: Path) -> None:
    from bert_onnx.export.variants import int8_ladder

    ladder = int8_ladder(variants_dir / interface.MODEL_FILE)
    down = [f"/model/encoder/layer.{i}/output/dense/MatMul" for i in range(3)]
    assert ladder == [down[:1], down[:2], down[:3]]
    gate = Manifest.read(variants_dir).variants["int8"].gate
    assert "kept in float: /model/encoder/layer.0/output/dense/MatMul" in gate
