"""A missing, corrupt or tampered model folder is an error that names the file, never a crash."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bert_onnx import choices, interface
from bert_onnx.manifest import FORMAT_VERSION, ModelFolderError
from bert_onnx.runtime import Encoder


@pytest.fixture
def folder(export_dir: Callable[[str], Path], tmp_path: Path) -> Path:
    """A private copy of the tiny export, safe to damage."""
    return Path(shutil.copytree(export_dir("tiny"), tmp_path / "model"))


@pytest.mark.fast
def test_intact_copy_loads(folder: Path) -> None:
    assert Encoder(folder).embed(["ok"]).shape == (1, 32)


@pytest.mark.fast
@pytest.mark.parametrize("name", [interface.MODEL_FILE, interface.TOKENIZER_FILE, interface.CONFIG_FILE])
def test_missing_file_is_named(folder: Path, name: str) -> None:
    (folder / name).unlink()
    with pytest.raises(ModelFolderError, match=rf"{name}: missing"):
        Encoder(folder)


@pytest.mark.fast
@pytest.mark.parametrize("name", [interface.MODEL_FILE, interface.TOKENIZER_FILE, interface.CONFIG_FILE])
@pytest.mark.parametrize("damage", ["truncate", "flip", "append"])
def test_corrupt_file_is_named(folder: Path, name: str, damage: str) -> None:
    path = folder / name
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data += b"\x00"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match=rf"{name}: SHA-256 .* does not match manifest.json"):
        Encoder(folder)


@pytest.mark.fast
def test_truncated_model_without_verification_is_still_a_named_error(folder: Path) -> None:
    path = folder / interface.MODEL_FILE
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelFolderError, match=rf"{interface.MODEL_FILE}: not a valid ONNX model file"):
        Encoder(folder, verify=False)


@pytest.mark.fast
@pytest.mark.parametrize("data", [b"", b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256)) * 40])
def test_garbage_model_without_verification_is_a_named_error(folder: Path, data: bytes) -> None:
    (folder / interface.MODEL_FILE).write_bytes(data)
    with pytest.raises(ModelFolderError, match=rf"{interface.MODEL_FILE}: "):
        Encoder(folder, verify=False)


@pytest.mark.fast
def test_garbage_tokenizer_without_verification_is_a_named_error(folder: Path) -> None:
    (folder / interface.TOKENIZER_FILE).write_text("{not json")
    with pytest.raises(ModelFolderError, match=rf"{interface.TOKENIZER_FILE}: not a readable tokenizers file"):
        Encoder(folder, verify=False)


@pytest.mark.fast
def test_missing_manifest(folder: Path) -> None:
    (folder / interface.MANIFEST_FILE).unlink()
    with pytest.raises(ModelFolderError, match=r"manifest.json: missing; is .* a folder written by"):
        Encoder(folder)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: "{broken", "not valid JSON"),
        (lambda m: "[1, 2]", "expected a JSON object"),
        (
            lambda m: json.dumps({**m, "format_version": FORMAT_VERSION + 1}),
            f"format_version {FORMAT_VERSION + 1} is not supported",
        ),
        (lambda m: json.dumps({**m, "format": "other"}), "format 'other' is not 'bert-onnx'"),
        (lambda m: json.dumps({k: v for k, v in m.items() if k != "hidden_size"}), "malformed manifest"),
        (
            lambda m: json.dumps({**m, "files": {k: v for k, v in m["files"].items() if k != "config.json"}}),
            "no checksum recorded for config.json",
        ),
        (lambda m: json.dumps({**m, "num_layers": 3}), "do not match the 3-layer interface"),
        (lambda m: json.dumps({**m, "parity": {**m["parity"], "outputs": []}}), "does not cover every output"),
        (lambda m: json.dumps({**m, "inputs": {**m["inputs"], "input_ids": {}}}), "inputs .* are not"),
        (
            lambda m: json.dumps({**m, "outputs": {**m["outputs"], "pooler_output": {"0": "b"}}}),
            "output axes .* are not the interface's",
        ),
    ],
)
def test_bad_manifest(folder: Path, edit: Callable[[dict], str], message: str) -> None:
    path = folder / interface.MANIFEST_FILE
    path.write_text(edit(json.loads(path.read_text())))
    with pytest.raises(ModelFolderError, match=message):
        Encoder(folder)


@pytest.mark.fast
def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="not a folder"):
        Encoder(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFolderError, match="not a folder"):
        Encoder(tmp_path / "file")


def test_graph_swapped_for_another_models_graph(
    folder: Path, export_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """A graph with other outputs, checksum re-recorded: the runtime still refuses it by its interface."""
    from bert_onnx.manifest import Manifest, sha256_file

    other = export_dir("minilm") / interface.MODEL_FILE
    shutil.copy(other, folder / interface.MODEL_FILE)
    manifest = json.loads((folder / interface.MANIFEST_FILE).read_text())
    manifest["files"][interface.MODEL_FILE] = sha256_file(folder / interface.MODEL_FILE)
    (folder / interface.MANIFEST_FILE).write_text(json.dumps(manifest))
    Manifest.read(folder).verify_files(folder)
    with pytest.raises(ModelFolderError, match=r"do not match manifest\.json"):
        Encoder(folder)


def _resign(folder: Path, name: str) -> None:
    """Record ``name``'s current SHA-256 in the manifest, as an attacker who rewrites both files would."""
    from bert_onnx.manifest import sha256_file

    path = folder / interface.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["files"][name] = sha256_file(folder / name)
    path.write_text(json.dumps(manifest))


@pytest.mark.fast
@pytest.mark.parametrize("where", ["opset import", "node"])
def test_custom_op_domain_is_refused_before_onnx_runtime_sees_it(folder: Path, where: str) -> None:
    import onnx
    from onnx import helper

    path = folder / interface.MODEL_FILE
    model = onnx.load(str(path))
    if where == "opset import":
        model.opset_import.append(helper.make_opsetid("com.example.custom", 1))
    else:  # a real custom node in the graph: ONNX Runtime would need a native library registered to run it
        model.opset_import.append(helper.make_opsetid("ai.evil", 1))
        last = model.graph.output[0].name
        model.graph.node.append(helper.make_node("Payload", [last], ["pwned"], domain="ai.evil"))
    onnx.save(model, str(path))
    _resign(folder, interface.MODEL_FILE)
    domain = "com.example.custom" if where == "opset import" else "ai.evil"
    with pytest.raises(ModelFolderError, match=rf"{interface.MODEL_FILE}: .*custom domain\(s\) '{domain}'"):
        Encoder(folder)


def test_known_domains_are_what_our_variants_use(variants_dir: Path) -> None:
    """The check reads the same domains onnx does, and every variant we export passes it."""
    import onnx

    from bert_onnx.runtime.graph_check import KNOWN_DOMAINS, operator_domains

    for variant in ("fp32", "opt", "int8"):
        path = variants_dir / choices.get(variant).file
        expected = {o.domain for o in onnx.load(str(path), load_external_data=False).opset_import}
        assert operator_domains(path) == expected
        assert expected <= KNOWN_DOMAINS
    assert "com.microsoft" in operator_domains(variants_dir / choices.get("opt").file)
