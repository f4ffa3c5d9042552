"""``export_model``: the folder it writes, the graph's interface, its parity gate, and how it fails."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import CHECKPOINT_NAMES, checkpoint_path, max_diffs, torch_reference

from bert_onnx import interface
from bert_onnx.export import ExportError, ParityError, export_model
from bert_onnx.manifest import Manifest, sha256_file

QUIET = {"log": lambda message: None}


def random_checkpoint(folder: Path, seed: int = 0, add_pooling_layer: bool = True, **config: Any) -> Path:
    """A random-weights BERT checkpoint with the real uncased vocabulary, saved like save_pretrained does."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    settings = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
    model = BertModel(BertConfig(**{**settings, **config}), add_pooling_layer=add_pooling_layer)
    model.save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(checkpoint_path("tiny") / name, folder / name)
    return folder


def list_in_manifest(folder: Path, name: str, text: str) -> None:
    """Write ``name`` into the export ``folder`` and list it in its manifest, as the file of a variant would be."""
    (folder / name).write_text(text, encoding="utf-8")
    manifest = json.loads((folder / interface.MANIFEST_FILE).read_text(encoding="utf-8"))
    manifest["files"][name] = sha256_file(folder / name)
    (folder / interface.MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")


def partial_dirs(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(".") and p.name.endswith((".partial", ".old"))]


@pytest.mark.fast
def test_manifest_describes_the_folder(export_dir: Callable[[str], Path]) -> None:
    folder = export_dir("tiny")
    manifest = Manifest.read(folder)
    assert manifest.source == str(checkpoint_path("tiny"))
    assert (manifest.num_layers, manifest.hidden_size, manifest.vocab_size) == (2, 32, 30522)
    assert (manifest.max_length, manifest.type_vocab_size, manifest.pad_token_id, manifest.opset) == (
        512,
        2,
        0,
        17,
    )
    assert manifest.output_names == interface.output_names(2)
    assert manifest.outputs["pooler_output"] == {0: "batch"}
    assert manifest.outputs["hidden_states.2"] == {0: "batch", 1: "sequence"}
    assert list(manifest.inputs) == list(interface.INPUT_NAMES)
    assert {"torch", "transformers", "onnx", "onnxruntime", "tokenizers", "bert-onnx"} <= set(manifest.versions)
    written = [*interface.CHECKSUMMED_FILES, interface.GATES_FILE]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*written, interface.MANIFEST_FILE])
    assert manifest.files == {name: sha256_file(folder / name) for name in written}
    assert [o.name for o in manifest.parity.outputs] == list(interface.output_names(2))
    assert manifest.parity.sequence_length == 512
    config = json.loads((folder / interface.CONFIG_FILE).read_text())
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 32


@pytest.mark.fast
def test_graph_interface(export_dir: Callable[[str], Path]) -> None:
    import onnx

    graph = onnx.load(str(export_dir("tiny") / interface.MODEL_FILE), load_external_data=False).graph

    def dims(value: Any) -> list[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [i.name for i in graph.input] == list(interface.INPUT_NAMES)
    for value in graph.input:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert dims(value) == ["batch", "sequence"]
    assert [o.name for o in graph.output] == list(interface.output_names(2))
    for value in graph.output:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        expected = ["batch", 32] if value.name == "pooler_output" else ["batch", "sequence", 32]
        assert dims(value) == expected, value.name


def test_tokenizer_json_has_no_baked_padding_or_truncation(export_dir: Callable[[str], Path]) -> None:
    source = json.loads((checkpoint_path("minilm") / "tokenizer.json").read_text())
    assert source["padding"] is not None and source["truncation"] is not None  # the trap being tested
    exported = json.loads((export_dir("minilm") / interface.TOKENIZER_FILE).read_text())
    assert exported["padding"] is None
    assert exported["truncation"] is None


@pytest.mark.parametrize("layers", [1, 24])
@pytest.mark.parametrize("opset", [14, 20])
def test_other_opsets_and_depths(tmp_path: Path, opset: int, layers: int) -> None:
    from bert_onnx.export.graph import load_model
    from bert_onnx.runtime import Encoder

    checkpoint = random_checkpoint(tmp_path / "ckpt", num_hidden_layers=layers)
    manifest = export_model(str(checkpoint), tmp_path / "out", opset=opset, **QUIET)
    assert manifest.opset == opset and manifest.num_layers == layers
    assert manifest.output_names[-1] == f"hidden_states.{layers}"
    enc = Encoder(tmp_path / "out")
    out = enc.encode(["I love Korea", "a somewhat longer second sentence"])
    model, _ = load_model(checkpoint)
    reference = torch_reference(model, out.input_ids, out.attention_mask, out.token_type_ids)
    diffs = max_diffs(reference, out, out.attention_mask)
    assert max(diffs.values()) <= interface.FP32_TOLERANCE, diffs


@pytest.mark.fast
@pytest.mark.parametrize("opset", [9, 13, 21])
def test_unsupported_opset(tmp_path: Path, opset: int) -> None:
    with pytest.raises(ExportError, match=f"opset={opset} is not supported; choose 14..20"):
        export_model(str(checkpoint_path("tiny")), tmp_path / "out", opset=opset, **QUIET)
    assert not (tmp_path / "out").exists() and partial_dirs(tmp_path) == []


@pytest.mark.fast
def test_existing_output_needs_force(export_dir: Callable[[str], Path], tmp_path: Path) -> None:
    target = Path(shutil.copytree(export_dir("tiny"), tmp_path / "model"))
    before = Manifest.read(target).created
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_model(str(checkpoint_path("tiny")), target, **QUIET)
    assert Manifest.read(target).created == before
    list_in_manifest(target, "stale.txt", "from the earlier export\n")  # as a variant the new export skips
    export_model(str(checkpoint_path("tiny")), target, force=True, **QUIET)
    # --force swapped in a whole new folder: nothing of the earlier one is left, and the new one verifies.
    assert not (target / "stale.txt").exists()
    Manifest.read(target).verify_files(target)
    assert partial_dirs(tmp_path) == []


@pytest.mark.fast
def test_missing_parent_folder_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist; create it first"):
        export_model(str(checkpoint_path("tiny")), tmp_path / "a" / "b" / "model", **QUIET)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.fast
def test_force_never_replaces_a_folder_we_did_not_write(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(ExportError, match="not a bert-onnx model folder"):
        export_model(str(checkpoint_path("tiny")), target, force=True, **QUIET)
    assert [p.name for p in target.iterdir()] == ["thesis.tex"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is not a folder"):
        export_model(str(checkpoint_path("tiny")), tmp_path / "file", force=True, **QUIET)


def _foreign_manifest(target: Path, earlier: Path) -> None:
    """Someone's web app: a manifest.json that is not ours, and their source beside it."""
    (target / "src").mkdir(parents=True)
    (target / interface.MANIFEST_FILE).write_text('{"name": "my app"}', encoding="utf-8")
    (target / "src" / "main.js").write_text("precious", encoding="utf-8")


def _export_with_user_files(target: Path, earlier: Path) -> None:
    """An earlier export into which a user put their own files (a note, a folder, an empty folder)."""
    shutil.copytree(earlier, target)
    (target / "notes").mkdir()
    (target / "notes" / "eval.txt").write_text("results", encoding="utf-8")
    (target / "mine.txt").write_text("mine", encoding="utf-8")
    (target / "empty").mkdir()


def _unreadable_manifest(target: Path, earlier: Path) -> None:
    target.mkdir()
    (target / interface.MANIFEST_FILE).write_text("{not json", encoding="utf-8")


@pytest.mark.fast
@pytest.mark.parametrize(
    ("layout", "needles"),
    [
        pytest.param(_foreign_manifest, ("not a bert-onnx manifest", "format None"), id="foreign-manifest"),
        pytest.param(
            _export_with_user_files,
            ("does not list: empty/, mine.txt, notes/eval.txt;", "move them out"),
            id="export-with-user-files",
        ),
        pytest.param(_unreadable_manifest, ("cannot be read as JSON",), id="unreadable-manifest"),
    ],
)
def test_force_never_deletes_what_a_manifest_does_not_list(
    export_dir: Callable[[str], Path],
    tmp_path: Path,
    layout: Callable[[Path, Path], None],
    needles: tuple[str, ...],
) -> None:
    target = tmp_path / "model"
    layout(target, export_dir("tiny"))
    before = {p.relative_to(target): p.read_bytes() if p.is_file() else None for p in target.rglob("*")}
    with pytest.raises(ExportError, match="refusing to replace it even with --force") as caught:
        export_model(str(checkpoint_path("tiny")), target, force=True, **QUIET)
    for needle in needles:
        assert needle in str(caught.value)
    assert {p.relative_to(target): p.read_bytes() if p.is_file() else None for p in target.rglob("*")} == before
    assert partial_dirs(tmp_path) == []


def _staging_of(target: Path, *, pid: int | None = None, host: str | None = None) -> Path:
    """A staging folder of ``target`` as :func:`staging_dir` names it, owned by ``pid`` on ``host``."""
    from bert_onnx import _files

    owner = _files._owner()
    name = f".{target.name}.{host or owner.rsplit('-', 1)[0]}-{pid or owner.rsplit('-', 1)[1]}-abcd1234.partial"
    (target.parent / name / "model.onnx").parent.mkdir()
    (target.parent / name / "model.onnx").write_bytes(b"half")
    return target.parent / name


@pytest.mark.fast
def test_staging_folders_of_killed_exports_are_removed(tmp_path: Path) -> None:
    """A staging folder whose process was killed (kill -9: no cleanup ran) goes at the next export of that target;
    one of a running process, of another host, of another target, or not named by us, stays."""
    import subprocess
    import sys

    target = tmp_path / "model"
    # A real one: a process makes its staging folder and is killed with SIGKILL inside it.
    script = (
        "import sys, time; from bert_onnx._files import staging_dir\n"
        "with staging_dir(sys.argv[1]) as staged:\n    print(staged, flush=True); time.sleep(600)"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    killed = Path(child.stdout.readline().strip())
    child.kill()
    child.wait()
    assert killed.is_dir() and killed.parent == tmp_path
    running = _staging_of(target, pid=os.getppid())
    other_host = _staging_of(target, pid=child.pid, host="elsewhere")
    other_target = _staging_of(tmp_path / "other", pid=child.pid)
    old_style = tmp_path / f".{target.name}.k3j2h1g0.partial"
    old_style.mkdir()

    export_model(str(checkpoint_path("tiny")), target, **QUIET)
    assert not killed.exists()
    assert all(p.is_dir() for p in (running, other_host, other_target, old_style))
    Manifest.read(target).verify_files(target)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("strip", "needles"),
    [
        pytest.param(
            ("vocab.txt", "tokenizer_config.json"),
            ("no tokenizer files (looked for tokenizer.json, vocab.txt", "5 special tokens"),
            id="no-tokenizer-files",
        ),
        pytest.param(("vocab.txt",), ("no tokenizer files",), id="config-without-vocabulary"),
    ],
)
def test_a_checkpoint_without_its_tokenizer_is_refused(
    tmp_path: Path, strip: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    checkpoint = Path(shutil.copytree(checkpoint_path("tiny"), tmp_path / "ckpt"))
    for name in strip:
        (checkpoint / name).unlink()
    with pytest.raises(ExportError, match=str(checkpoint)) as caught:
        export_model(str(checkpoint), tmp_path / "out", **QUIET)
    for needle in needles:
        assert needle in str(caught.value)
    assert not (tmp_path / "out").exists() and partial_dirs(tmp_path) == []


@pytest.mark.fast
def test_a_tokenizer_far_smaller_than_the_vocabulary_is_refused(tmp_path: Path) -> None:
    checkpoint = Path(shutil.copytree(checkpoint_path("tiny"), tmp_path / "ckpt"))
    words = (checkpoint / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (checkpoint / "vocab.txt").write_text("\n".join(words[:120]) + "\n", encoding="utf-8")  # [PAD], [unused*], ...
    with pytest.raises(ExportError, match=r"\(vocab\.txt\) has 120 tokens, under 1% of the model's vocab_size 30522"):
        export_model(str(checkpoint), tmp_path / "out", **QUIET)


@pytest.mark.parametrize("key", sorted(CHECKPOINT_NAMES))
def test_every_shipped_checkpoint_passes_the_tokenizer_check(key: str, tmp_path: Path) -> None:
    """Each family's checkpoint (some with a trimmed vocabulary, one with only tokenizer.json) keeps exporting."""
    from bert_onnx.export.tokenizer import convert_tokenizer

    config = json.loads((checkpoint_path(key) / "config.json").read_text(encoding="utf-8"))
    converted = convert_tokenizer(checkpoint_path(key), int(config["vocab_size"]), tmp_path / "tokenizer.json")
    assert len(converted.reference) >= 0.01 * int(config["vocab_size"])


@pytest.mark.fast
def test_a_truncated_weights_file_is_refused_naming_it(tmp_path: Path) -> None:
    checkpoint = random_checkpoint(tmp_path / "ckpt")
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted copy
    with pytest.raises(ExportError, match=f"{weights}: cannot be read .*damaged or incomplete"):
        export_model(str(checkpoint), tmp_path / "out", **QUIET)
    assert not (tmp_path / "out").exists() and partial_dirs(tmp_path) == []


@pytest.mark.fast
def test_parity_gate_fails_loudly_and_writes_nothing(
    export_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph that drifts from PyTorch (the pooler's weight nudged) is caught, reported per output, not installed."""
    import onnx
    from onnx import numpy_helper

    from bert_onnx.export import pipeline

    target = Path(shutil.copytree(export_dir("tiny"), tmp_path / "model"))  # before patching: it may export
    real_export = pipeline.export_graph

    def drifting_export(model: Any, path: Path, opset: int = 17) -> None:
        real_export(model, path, opset)
        graph = onnx.load(str(path))
        for index, tensor in enumerate(graph.graph.initializer):
            if tensor.name == "model.pooler.dense.weight":
                weights = numpy_helper.to_array(tensor)
                noise = np.random.default_rng(0).normal(0.0, 0.01, weights.shape).astype(np.float32)
                values = weights + noise
                graph.graph.initializer[index].CopyFrom(numpy_helper.from_array(values, tensor.name))
                break
        else:
            raise AssertionError("no pooler weight found to perturb")
        onnx.save(graph, str(path))

    monkeypatch.setattr(pipeline, "export_graph", drifting_export)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(ParityError) as caught:
        export_model(str(checkpoint_path("tiny")), target, force=True, **QUIET)
    failing = {o.name for o in caught.value.report.failures}
    assert failing == {"pooler_output"}
    assert "parity check failed for pooler_output" in str(caught.value) and "FAIL" in str(caught.value)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before, "the earlier export must survive"
    assert partial_dirs(tmp_path) == []


@pytest.mark.fast
def test_missing_pooler_weights_are_noted(tmp_path: Path) -> None:
    checkpoint = random_checkpoint(tmp_path / "ckpt", add_pooling_layer=False)
    manifest = export_model(str(checkpoint), tmp_path / "out", **QUIET)
    assert any("no pooler weights" in note for note in manifest.notes)


@pytest.mark.fast
def test_missing_encoder_weights_are_refused(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    checkpoint = random_checkpoint(tmp_path / "ckpt")
    weights = load_file(checkpoint / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layer.1.output" not in k}, checkpoint / "model.safetensors")
    with pytest.raises(ExportError, match="checkpoint lacks encoder weights"):
        export_model(str(checkpoint), tmp_path / "out", **QUIET)
    assert not (tmp_path / "out").exists()


@pytest.mark.fast
def test_unlisted_family_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2Model"]}))
    with pytest.raises(ExportError, match="model_type 'gpt2' is not a family bert-onnx exports; supported: bert, "):
        export_model(str(folder), tmp_path / "out", **QUIET)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "no config.json; not a transformers checkpoint folder"),
        (lambda p: p.write_text("x"), "is a file; MODEL must be a checkpoint folder or a hub id"),
    ],
)
def test_bad_local_model(tmp_path: Path, make: Callable[[Path], Any], message: str) -> None:
    make(tmp_path / "ckpt")
    with pytest.raises(ExportError, match=message):
        export_model(str(tmp_path / "ckpt"), tmp_path / "out", **QUIET)


@pytest.mark.fast
def test_invalid_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="neither an existing folder nor a valid hub id"):
        export_model("not//a valid id", tmp_path / "out", **QUIET)


@pytest.mark.fast
@pytest.mark.parametrize("offline_flag", [True, False])
def test_uncached_hub_model_fails_fast_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline_flag: bool
) -> None:
    """This machine has no hub. With or without HF_HUB_OFFLINE, the default model fails at once and says why."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline_flag)
    # It must fail at once, not retry for minutes: a thread with a deadline (a hang fails instead of blocking).
    pool = ThreadPoolExecutor(max_workers=1)
    attempt = pool.submit(export_model, output=tmp_path / "out", **QUIET)  # default MODEL: bert-base-uncased
    pool.shutdown(wait=False)
    try:
        error = attempt.exception(timeout=20)
    except TimeoutError:
        pytest.fail("exporting an uncached hub model offline did not fail within 20 s")
    assert isinstance(error, ExportError), error
    message = str(error)
    assert "'bert-base-uncased' is not in the local Hugging Face cache" in message
    assert ("HF_HUB_OFFLINE is set" if offline_flag else "cannot be reached") in message
    assert "Pass a local checkpoint folder instead" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.fast
def test_hub_id_served_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id whose files are in the Hugging Face cache exports offline, recording id and commit.

    The cached files are the tiny random checkpoint standing in for bert-base-uncased (no hub here).
    """
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--bert-base-uncased"
    shutil.copytree(checkpoint_path("tiny"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    manifest = export_model(output=tmp_path / "out", **QUIET)
    assert (manifest.source, manifest.revision) == ("bert-base-uncased", commit)
    assert manifest.num_layers == 2
