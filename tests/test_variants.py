"""Variants (opt, int8, fp16): built at export, each behind its own gate, chosen by the runtime per device."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from helpers import checkpoint_path, max_diffs, torch_reference

from bert_onnx import choices, gates, interface, machine
from bert_onnx.export import ExportError, export_model
from bert_onnx.export.errors import VariantGateError
from bert_onnx.manifest import Manifest, ModelFolderError
from bert_onnx.runtime import Encoder

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_manifest_records_every_variant_and_its_gate(variants_dir: Path) -> None:
    manifest = Manifest.read(variants_dir)
    assert list(manifest.variants) == ["fp32", "opt", "int8"]
    for name, record in manifest.variants.items():
        assert record.file == choices.get(name).file
        # Where the gate ran is on record (int8 rounds differently per CPU); that it passed, Manifest.read checks.
        assert record.checks and record.measured_on["cpu"]
        assert (variants_dir / record.file).is_file()
    manifest.verify_files(variants_dir)
    assert {c.name for c in manifest.variants["int8"].checks} == {
        *(f"{corpus}: {name}" for corpus in ("documentation", "informal") for name in gates.INT8_GATE),
        "batch invariance max abs diff",
    }
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


@pytest.mark.parametrize("corpus", ["documentation", "informal"])
def test_int8_gate_reproduces_through_the_runtime(
    variants_dir: Path, torch_model: Callable[[str], Any], corpus: str
) -> None:
    """Re-measure the int8 gate on each of its corpora through Encoder.embed (runtime tokenizer, batching, pooling)
    against PyTorch fp32 computed here in the same batches. The export measured the same numbers on this CPU in this
    session through the same batching function, and per-token int8 is exact integer arithmetic, so they agree to
    rounding."""
    import torch

    from bert_onnx.export.corpus import split
    from bert_onnx.export.variants import GATE_TEXTS
    from bert_onnx.gates import INT8_GATE, embedding_quality, sentence_embeddings

    texts, _ = split(GATE_TEXTS, corpus=corpus)
    encoder = Encoder(variants_dir, variant="int8")
    model = torch_model("minilm")

    def torch_run(names: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return [model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()]

    reference = sentence_embeddings(texts, encoder.tokenizer, torch_run, encoder.max_length)
    quality = embedding_quality(reference, encoder.embed(texts, pooling="mean", normalize=True))
    record = Manifest.read(variants_dir).variants["int8"]
    recorded = {c.name: c.value for c in record.checks}
    for name, limit in INT8_GATE.items():
        assert quality[name] >= limit, (name, quality[name])
        assert quality[name] == pytest.approx(recorded[f"{corpus}: {name}"], abs=1e-6), name
    assert record.measured_on["isa"] == machine.instruction_sets()


def test_int8_is_batch_invariant_at_export(variants_dir: Path) -> None:
    record = Manifest.read(variants_dir).variants["int8"]
    check = next(c for c in record.checks if c.name == "batch invariance max abs diff")
    assert check.limit == 1e-4 and check.value <= check.limit
    weights = Manifest.read(variants_dir).extra["int8_weights"]
    assert weights in machine.int8_weight_encodings()  # s8 with VNNI; s7 or u8 without: exact on this CPU
    assert {"s8": "s8 weights (VNNI)", "s7": "7-bit s8 weights", "u8": "u8 weights"}[weights] in record.gate


def test_signed_int8_weights_on_a_cpu_without_vnni(
    variants_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked for, it runs with a warning; tune lists it as a choice that cannot run here, with the reason."""
    from bert_onnx import tuning

    folder = Path(shutil.copytree(variants_dir, tmp_path / "model"))
    manifest = Manifest.read(folder)
    manifest.extra["int8_weights"] = "s8"
    manifest.write(folder)
    monkeypatch.setattr(machine, "has_vnni", lambda: False)
    with pytest.warns(UserWarning, match="int8's export gate does not hold here: its weights are signed .* no VNNI"):
        assert Encoder(folder, variant="int8").variant == "int8"
    reasons = dict(tuning.candidates(Manifest.read(folder), "cpu"))
    assert "its weights are signed" in str(reasons["int8"]) and reasons["fp32"] is None
    manifest.extra["int8_weights"] = "u8"
    manifest.write(folder)
    assert dict(tuning.candidates(Manifest.read(folder), "cpu"))["int8"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Encoder(folder, variant="int8").variant == "int8"


def test_clipping_is_judged_per_onnx_runtime_int8_choice(variants_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 and opt-int8 record their own weights; a folder from before records one for both; OpenVINO's int8 is
    compiled for the CPU it runs on, so never flagged."""
    from bert_onnx.runtime.backends import int8_clips_here

    manifest = Manifest.read(variants_dir)
    for name in ("opt-int8", "openvino-int8"):
        manifest.variants[name] = manifest.variants["int8"]
    manifest.extra.update(int8_weights="s8", opt_int8_weights="s7")
    monkeypatch.setattr(machine, "has_vnni", lambda: False)
    assert "signed 8-bit" in str(int8_clips_here(manifest, choices.get("int8")))
    assert int8_clips_here(manifest, choices.get("opt-int8")) is None
    assert int8_clips_here(manifest, choices.get("openvino-int8")) is None
    del manifest.extra["opt_int8_weights"]
    assert "signed 8-bit" in str(int8_clips_here(manifest, choices.get("opt-int8")))
    monkeypatch.setattr(machine, "has_vnni", lambda: True)
    assert int8_clips_here(manifest, choices.get("int8")) is None


def test_without_a_tuned_profile_the_default_is_fp32(variants_dir: Path, export_dir: Callable[[str], Path]) -> None:
    """int8 is stored and passed its gate at export, but nothing measured it faster here: fp32 runs."""
    encoder = Encoder(variants_dir)
    assert (encoder.variant, encoder.choice) == ("fp32", "fp32")
    assert encoder.describe()["picked_by"].startswith("default (no tuned profile for this machine")
    assert Encoder(export_dir("tiny")).variant == "fp32"  # a folder exported without variants
    assert Encoder(variants_dir, variant="int8").describe()["picked_by"] == "asked for"


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
    with open(folder / choices.get("int8").file, "ab") as handle:
        handle.write(b"\x00")
    assert Encoder(folder, variant="fp32").embed(["ok"]).shape == (1, 384)
    with pytest.raises(ModelFolderError, match=r"model\.int8\.onnx: SHA-256 .* does not match"):
        Encoder(folder, variant="int8")


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
    from bert_onnx import gates

    # A gate no quantized model can meet, standing in for a checkpoint that int8 damages.
    monkeypatch.setattr(gates, "INT8_GATE", {**gates.INT8_GATE, "min cosine": 1.5})
    with pytest.raises(VariantGateError, match=r"variant 'int8' failed its gate: documentation: min cosine") as caught:
        export_model(str(checkpoint_path("tiny")), tmp_path / "out", variants="int8", log=lambda m: None)
    assert [c.name for c in caught.value.record.failures] == ["documentation: min cosine", "informal: min cosine"]
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


def test_int8_ladder_tries_all_int8_then_ffn_down_projections_in_float(variants_dir: Path) -> None:
    from bert_onnx.export.variants import int8_ladder
    from bert_onnx.families import BERT

    ladder = int8_ladder(variants_dir / interface.MODEL_FILE, BERT.down_projections)
    down = [f"/model/encoder/layer.{i}/output/dense/MatMul" for i in range(3)]
    assert ladder == [[], down[:1], down[:2], down[:3]]
    gate = Manifest.read(variants_dir).variants["int8"].gate
    assert "FFN down-projection(s) kept in float" in gate


@pytest.mark.parametrize("vnni", [True, False])
def test_int8_rungs_try_the_fastest_exact_weights_first(
    variants_dir: Path, monkeypatch: pytest.MonkeyPatch, vnni: bool
) -> None:
    from bert_onnx.export.variants import int8_ladder, int8_rungs
    from bert_onnx.families import BERT

    monkeypatch.setattr(machine, "has_vnni", lambda: vnni)
    path = variants_dir / interface.MODEL_FILE
    ladder = int8_ladder(path, BERT.down_projections)
    rungs = int8_rungs(path, BERT.down_projections)
    if vnni:
        assert rungs == [("s8", nodes) for nodes in ladder]
    else:  # 7-bit weights with every MatMul in int8, then 8-bit (unsigned) weights up the float ladder
        assert rungs == [("s7", []), *(("u8", nodes) for nodes in ladder)]


@pytest.mark.fast
@pytest.mark.parametrize("choice", ["int8", "opt-int8"])
@pytest.mark.parametrize(("passing", "expected"), [(0, ("s7", 0)), (1, ("u8", 0)), (3, ("u8", 2)), (9, ("u8", 3))])
def test_int8_climb_stops_at_the_first_passing_rung_and_records_its_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, choice: str, passing: int, expected: tuple[str, int]
) -> None:
    """Without VNNI: s7 first, then u8 with 0..3 float down-projections; the rung that passed (or the last one) is
    what the folder holds, and its weights are recorded under the choice's own key for the runtime."""
    from types import SimpleNamespace

    from bert_onnx.export import variants
    from bert_onnx.manifest import Check, VariantRecord

    down = [f"layer.{i}/output/dense" for i in range(3)]
    monkeypatch.setattr(machine, "has_vnni", lambda: False)
    monkeypatch.setattr(variants, "int8_ladder", lambda *a: [down[:count] for count in range(4)])
    monkeypatch.setattr(variants, "_check_outputs", lambda *a: None)
    built: list[tuple[str, int]] = []
    build_one = lambda *a: built.append((a[-1], len(a[-2])))  # noqa: E731  (fp32, target, [config], nodes, weights)
    monkeypatch.setattr(variants, "build_int8", build_one)
    monkeypatch.setattr(variants, "build_opt_int8", lambda *a: build_one(*a) or {})

    def measure(details: str) -> VariantRecord:
        value = 1.0 if len(built) - 1 >= passing else 0.0
        return VariantRecord("model.int8.onnx", ("cpu",), details, (Check("top-10", value, 0.5, at_least=True),))

    build = SimpleNamespace(
        choice=choices.get(choice), fp32_path=tmp_path / "model.onnx", target=tmp_path / "x.onnx",
        config=SimpleNamespace(model_type="bert"), measure=measure, log=lambda message: None,
    )  # fmt: skip
    record, details = variants.MAKERS[choice](build)  # type: ignore[arg-type]
    assert built[-1] == expected and len(built) == min(passing + 1, 5)
    assert record.passed == (passing < 5)
    assert details[choices.int8_weights_key(choice)] == expected[0]


def test_fp16_build_drops_exact_duplicate_nodes() -> None:
    """ONNX Runtime 1.31's float16 converter (seen on a CUDA machine) repeated a Cast node; the copy goes, a real
    name clash is refused."""
    from onnx import helper

    from bert_onnx.export.variants import _drop_duplicate_nodes

    cast = helper.make_node("Cast", ["bias"], ["bias_fp32"], name="bias_cast_to_fp32_node", to=1)
    add = helper.make_node("Add", ["x", "bias_fp32"], ["y"], name="add")
    model = helper.make_model(helper.make_graph([cast, add, cast], "g", [], []))
    _drop_duplicate_nodes(model)
    assert [n.name for n in model.graph.node] == ["bias_cast_to_fp32_node", "add"]
    clash = helper.make_node("Cast", ["other"], ["other_fp32"], name="add", to=1)
    with pytest.raises(ExportError, match="two different nodes named 'add'"):
        _drop_duplicate_nodes(helper.make_model(helper.make_graph([add, clash], "g", [], [])))
