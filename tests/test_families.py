"""Every model family besides BERT: export, tokenizer ids, every output against PyTorch, the graph's interface per
family, the variants, and each command (embed, resumable jobs, Ray's per-batch call, serve, verify, tune).

Each family's checkpoint is small (2 layers) with seeded RANDOM weights and a tokenizer of its own kind trained
on real text (``scripts/checkpoints_families.py``); ``roberta-base`` has RoBERTa-base's full shape. PyTorch's
outputs are computed here, in the test, from the same checkpoint.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import assert_error, checkpoint_path, embed_args, run_cli, write_lines

from bert_onnx import families, interface, tuning
from bert_onnx.errors import InvalidValueError
from bert_onnx.export import export_model
from bert_onnx.export.corpus import documentation_paragraphs
from bert_onnx.export.errors import ExportError
from bert_onnx.export.variants import int8_ladder
from bert_onnx.manifest import Manifest
from bert_onnx.runtime import EmbedRecipe, Encoder, openvino_backend

TINY = ("roberta", "xlm-roberta", "distilbert", "albert", "electra", "mpnet", "deberta-v2", "deberta-v3", "modernbert")
KEYS = (*TINY, "bert-generic-tokenizer")
TOLERANCE = 1e-5  # every output against PyTorch; the export's own gate is interface.FP32_TOLERANCE (1e-4)
# What each checkpoint's graph takes: written out, so a wrong table entry or a dropped input fails here.
SEGMENTS = {"albert", "electra", "bert-generic-tokenizer"}  # RoBERTa/XLM-R: one segment type; DeBERTa: none
POOLER = {"roberta", "xlm-roberta", "albert", "mpnet", "bert-generic-tokenizer"}
PAIR_OF_SEPARATORS = {"roberta", "xlm-roberta", "mpnet"}  # <s> A </s></s> B </s>
EXTRA_TEXTS = [
    "I love Korea",
    "Hello!",
    "",
    "Ünïcödé àccents, 中文字符 and emoji 🙂 go through the same tokenizer.",
    "Seoul is the capital of South Korea, and Busan is its second largest city.",
]
PAIRS = [
    ("How old are you?", "I am six years old and I live in Seoul."),
    ("Return the value of the named attribute of object.", "If the string is the name of one of the attributes."),
]


def _variants() -> tuple[str, ...]:
    bf16 = "BF16" in openvino_backend.cpu_capabilities()
    return ("fp32", "opt", "int8", "openvino-fp32", *(("openvino-bf16",) if bf16 else ()))


def _bert_family(key: str) -> str:
    return {"deberta-v3": "deberta-v2", "bert-generic-tokenizer": "bert"}.get(key, key)


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``family_dir(key)``: the checkpoint exported once per session with every variant that runs on this CPU."""
    folders: dict[str, Path] = {}

    def get(key: str) -> Path:
        if key not in folders:
            target = tmp_path_factory.mktemp(f"family-{key}") / "model"
            export_model(str(checkpoint_path(key)), target, variants=_variants(), log=lambda message: None)
            folders[key] = target
        return folders[key]

    return get


@pytest.fixture(scope="session")
def reference(torch_model: Callable[[str], Any]) -> Callable[[str], Any]:
    """``reference(key)``: (the transformers tokenizer, the PyTorch model), loaded once."""
    from transformers import AutoTokenizer

    loaded: dict[str, Any] = {}

    def get(key: str) -> Any:
        if key not in loaded:
            loaded[key] = (AutoTokenizer.from_pretrained(checkpoint_path(key)), torch_model(key))
        return loaded[key]

    return get


def _texts() -> list[str]:
    """Real paragraphs of varied length, a few others, and one text far over 512 tokens."""
    paragraphs = list(documentation_paragraphs())
    return [*paragraphs[:24:3], *EXTRA_TEXTS, " ".join(paragraphs[100:160])]


def _torch_outputs(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch's outputs by graph name, computed now: last_hidden_state, pooler_output (if any), hidden states."""
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, output_hidden_states=True, return_dict=True)
    named = {interface.LAST_HIDDEN_STATE: out.last_hidden_state.numpy()}
    if getattr(out, "pooler_output", None) is not None:
        named[interface.POOLER_OUTPUT] = out.pooler_output.numpy()
    named.update({interface.hidden_state_name(i): h.numpy() for i, h in enumerate(out.hidden_states)})
    return named


def _diffs(expected: dict[str, np.ndarray], out: Any, mask: np.ndarray) -> dict[str, float]:
    """Max abs diff per output over real tokens (pooler: every row), in float64."""
    keep = mask.astype(bool)
    actual = {interface.LAST_HIDDEN_STATE: out.last_hidden_state}
    if out.pooler_output is not None:
        actual[interface.POOLER_OUTPUT] = out.pooler_output
    actual.update({interface.hidden_state_name(i): h for i, h in enumerate(out.hidden_states)})
    assert list(actual) == list(expected)
    diffs = {}
    for name, ref in expected.items():
        assert actual[name].shape == ref.shape and actual[name].dtype == np.float32, name
        diff = np.abs(actual[name].astype(np.float64) - ref.astype(np.float64))
        diffs[name] = float((diff if name == interface.POOLER_OUTPUT else diff[keep]).max())
    return diffs


def _assert_close(diffs: dict[str, float]) -> None:
    failing = {name: diff for name, diff in diffs.items() if not diff <= TOLERANCE}
    assert not failing, f"outputs over {TOLERANCE}: {failing}"


# -- the family table against transformers ---------------------------------------------------------------------


@pytest.mark.fast
@pytest.mark.parametrize("model_type", list(families.FAMILIES))
def test_the_table_says_what_transformers_does(model_type: str) -> None:
    import transformers

    family = families.FAMILIES[model_type]
    model_class = getattr(transformers, family.model_class)
    assert model_class.config_class.model_type == model_type
    takes = inspect.signature(model_class.forward).parameters
    assert ("token_type_ids" in takes) == family.token_type_ids
    has_pooler = "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
    assert has_pooler == family.pooler, f"{model_class.__name__} pooler"


# -- tokenizer ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_ids_equal_transformers_for_texts_and_pairs(
    key: str, family_dir: Callable[[str], Path], reference: Callable[[str], Any]
) -> None:
    tokenizer, _ = reference(key)
    enc = Encoder(family_dir(key), variant="fp32")
    texts = _texts()
    ours = [list(e.ids) for e in enc.tokenizer.encodings(texts, enc.max_length)]
    theirs = tokenizer(texts, truncation=True, max_length=enc.max_length)["input_ids"]
    assert ours == theirs
    assert len(ours[-1]) == enc.max_length == 512, "the long text is cut to the usable length"
    assert enc.tokenizer.tokenize(texts[0]) == tokenizer.tokenize(texts[0])
    for first, second in PAIRS:
        encoding = enc.tokenizer.backend.encode(first, second)
        want = tokenizer(first, second, return_token_type_ids=True)
        assert list(encoding.ids) == want["input_ids"]
        assert list(encoding.type_ids) == want["token_type_ids"]
        alone = len(tokenizer(first)["input_ids"])
        separators = want["input_ids"][alone - 1 : alone + 1]
        doubled = separators == [tokenizer.sep_token_id] * 2
        assert doubled == (key in PAIR_OF_SEPARATORS), tokenizer.convert_ids_to_tokens(want["input_ids"])


# -- outputs -----------------------------------------------------------------------------------------------------


def _feeds(out: Any) -> dict[str, np.ndarray]:
    """The inputs the graph was fed, by name."""
    feeds = {"input_ids": out.input_ids, "attention_mask": out.attention_mask}
    if out.token_type_ids is not None:
        feeds["token_type_ids"] = out.token_type_ids
    return feeds


@pytest.mark.parametrize("key", KEYS)
def test_every_output_matches_pytorch_on_real_text_and_a_512_token_row(
    key: str, family_dir: Callable[[str], Path], reference: Callable[[str], Any]
) -> None:
    _, model = reference(key)
    enc = Encoder(family_dir(key), variant="fp32")
    out = enc.encode(_texts())
    assert out.input_ids.shape[1] == 512 and (out.attention_mask == 0).any(), "a 512-token row beside padded ones"
    _assert_close(_diffs(_torch_outputs(model, _feeds(out)), out, out.attention_mask))
    assert len(out.hidden_states) == enc.num_layers + 1
    assert (out.pooler_output is not None) == (key in POOLER)


@pytest.mark.parametrize("key", KEYS)
def test_pairs_run_as_transformers_encodes_them(
    key: str, family_dir: Callable[[str], Path], reference: Callable[[str], Any]
) -> None:
    tokenizer, model = reference(key)
    enc = Encoder(family_dir(key), variant="fp32")
    batch = tokenizer(
        [a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_token_type_ids=True, return_tensors="np"
    )
    segments = batch["token_type_ids"] if key in SEGMENTS else None
    if key in SEGMENTS:
        assert segments.max() == 1, "the pair's second text is segment 1"
    out = enc.run(batch["input_ids"], batch["attention_mask"], segments)
    _assert_close(_diffs(_torch_outputs(model, _feeds(out)), out, out.attention_mask))


def test_modernbert_attends_locally_beyond_its_window(
    family_dir: Callable[[str], Path], reference: Callable[[str], Any]
) -> None:
    """The 512-token row is far longer than the 64-token window of layer 1: the graph follows transformers there,
    and global attention in its place would give other numbers (so the parity above can see the window)."""
    from transformers import ModernBertModel

    _, model = reference("modernbert")
    assert model.config.layer_types == ["full_attention", "sliding_attention"] and model.config.local_attention == 64
    enc = Encoder(family_dir("modernbert"), variant="fp32")
    out = enc.encode([_texts()[-1]])
    assert out.attention_mask.sum() == 512
    _assert_close(_diffs(_torch_outputs(model, _feeds(out)), out, out.attention_mask))
    widened = ModernBertModel.from_pretrained(
        checkpoint_path("modernbert"), local_attention=1024, attn_implementation="eager"
    ).eval()
    global_only = _torch_outputs(widened, _feeds(out))[interface.LAST_HIDDEN_STATE]
    assert np.abs(global_only - out.last_hidden_state).max() > 100 * TOLERANCE


@pytest.mark.parametrize("key", ["roberta", "xlm-roberta", "mpnet"])
def test_padding_offset_positions_leave_512_tokens_of_514_rows(
    key: str, family_dir: Callable[[str], Path], reference: Callable[[str], Any]
) -> None:
    _, model = reference(key)
    manifest = Manifest.read(family_dir(key))
    assert model.config.max_position_embeddings == 514 and manifest.max_length == 512
    enc = Encoder(family_dir(key), variant="fp32")
    with pytest.raises(InvalidValueError, match="over the model's maximum of 512 positions"):
        enc.run(np.full((1, 513), 5))


@pytest.mark.slow
def test_roberta_base_shape_matches_pytorch(export_dir: Callable[[str], Path], reference: Callable[[str], Any]) -> None:
    _, model = reference("roberta-base")
    enc = Encoder(export_dir("roberta-base"), variant="fp32")
    assert (enc.num_layers, enc.hidden_size, enc.manifest.vocab_size) == (12, 768, 50265)
    out = enc.encode(_texts())
    assert out.input_ids.shape[1] == 512
    _assert_close(_diffs(_torch_outputs(model, _feeds(out)), out, out.attention_mask))


# -- the graph's interface -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_the_graph_takes_what_the_family_takes_and_has_a_pooler_only_where_it_does(
    key: str, family_dir: Callable[[str], Path]
) -> None:
    import onnxruntime as ort

    folder = family_dir(key)
    manifest = Manifest.read(folder)
    session = ort.InferenceSession(str(folder / interface.MODEL_FILE), providers=["CPUExecutionProvider"])
    inputs = tuple(i.name for i in session.get_inputs())
    outputs = tuple(o.name for o in session.get_outputs())
    segments = ("token_type_ids",) if key in SEGMENTS else ()
    assert inputs == manifest.input_names == ("input_ids", "attention_mask", *segments)
    assert outputs == manifest.output_names == interface.output_names(manifest.num_layers, key in POOLER)
    assert manifest.family == _bert_family(key) and manifest.model_family.pooler == (key in POOLER)
    info = run_cli("info", folder)
    assert info.returncode == 0, info.describe()
    pooler = "with" if key in POOLER else "no"
    assert re.search(rf"^family +{manifest.family} \({pooler} pooler\)$", info.stdout, re.MULTILINE), info.stdout


@pytest.mark.parametrize("key", sorted(set(KEYS) - POOLER))
def test_pooler_pooling_is_refused_naming_the_family(key: str, family_dir: Callable[[str], Path]) -> None:
    enc = Encoder(family_dir(key), variant="fp32")
    family = _bert_family(key)
    with pytest.raises(InvalidValueError, match=f"pooling='pooler' reads pooler_output, and {family} models have no"):
        enc.embed(["a text"], pooling="pooler")
    out = enc.encode(["a text"], output_hidden_states=False)
    assert out.pooler_output is None and out.hidden_states is None


@pytest.mark.parametrize("key", ["distilbert", "modernbert", "mpnet"])
def test_segment_ids_are_refused_where_the_model_takes_none(key: str, family_dir: Callable[[str], Path]) -> None:
    enc = Encoder(family_dir(key), variant="fp32")
    with pytest.raises(InvalidValueError, match=f"{_bert_family(key)} models take no segment ids"):
        enc.run([[5, 6, 7]], token_type_ids=[[0, 0, 0]])


def test_roberta_takes_segment_zero_only(family_dir: Callable[[str], Path]) -> None:
    """RoBERTa's model takes token_type_ids, but with one segment type they can only be zeros: the graph has no
    such input, zeros give what no segment ids give, and a 1 is out of range."""
    enc = Encoder(family_dir("roberta"), variant="fp32")
    ids = [[0, 5, 6, 7, 2]]
    without = enc.run(ids).last_hidden_state
    assert np.array_equal(enc.run(ids, token_type_ids=[[0] * 5]).last_hidden_state, without)
    with pytest.raises(InvalidValueError, match=r"token_type_ids\[0, 4\] = 1 is outside \[0, 1\)"):
        enc.run(ids, token_type_ids=[[0, 0, 0, 0, 1]])


# -- variants ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", TINY)
def test_every_variant_passes_its_gate(key: str, family_dir: Callable[[str], Path]) -> None:
    folder = family_dir(key)
    manifest = Manifest.read(folder)
    assert tuple(manifest.variants) == _variants()
    assert all(record.passed for record in manifest.variants.values())
    fused = manifest.extra["opt_fused_operators"]
    assert fused.get("SkipLayerNormalization", 0) >= manifest.num_layers, fused
    family = manifest.model_family
    down = int8_ladder(folder / interface.MODEL_FILE, family.down_projections, rungs=manifest.num_layers)[-1]
    assert len(down) == manifest.num_layers, f"{family.down_projections} matched {down}"


def test_a_variant_the_family_does_not_offer_is_refused_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    without_opt = dataclasses.replace(families.FAMILIES["roberta"], not_offered={"opt": "measured to miss its gate"})
    monkeypatch.setattr(families, "FAMILIES", {**families.FAMILIES, "roberta": without_opt})
    target = tmp_path / "model"
    with pytest.raises(ExportError, match=r"opt are not offered for roberta models \(opt: measured to miss its gate"):
        export_model(str(checkpoint_path("roberta")), target, variants=("fp32", "opt"), log=lambda m: None)
    assert not target.exists() and list(tmp_path.iterdir()) == []


# -- bad checkpoints ---------------------------------------------------------------------------------------------


def _checkpoint(folder: Path, config: dict[str, Any], tokenizer_config: dict[str, Any] | None = None) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    if tokenizer_config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


@pytest.mark.fast
def test_an_unlisted_family_names_the_supported_ones(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path / "gpt2", {"model_type": "gpt2"})
    run = run_cli("export", source, "--output", tmp_path / "out")
    supported = ", ".join(families.FAMILIES)
    assert_error(run, ("model_type 'gpt2' is not a family bert-onnx exports", f"supported: {supported}"))
    assert not (tmp_path / "out").exists()


@pytest.mark.fast
@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_a_model_that_needs_remote_code_is_refused_saying_so(tmp_path: Path, where: str) -> None:
    auto_map = {"auto_map": {"AutoModel": "modeling_custom.CustomModel"}}
    config = {"model_type": "bert", **(auto_map if where == "config.json" else {})}
    source = _checkpoint(tmp_path / "custom", config, auto_map if where != "config.json" else None)
    with pytest.raises(ExportError, match=rf"{where}: auto_map .* needs remote code \(trust_remote_code\)"):
        export_model(str(source), tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.fast
def test_a_folder_from_before_families_reads_as_bert(export_dir: Callable[[str], Path], tmp_path: Path) -> None:
    data = json.loads((export_dir("tiny") / interface.MANIFEST_FILE).read_text())
    assert data.pop("family") == "bert"
    assert Manifest.from_dict(data).family == "bert"
    data["family"] = "gpt2"
    with pytest.raises(ValueError, match="family 'gpt2' is not one this bert-onnx knows"):
        Manifest.from_dict(data)


def test_a_generic_fast_tokenizer_without_segment_ids_exports_and_runs(
    family_dir: Callable[[str], Path], reference: Callable[[str], Any]
) -> None:
    tokenizer, _ = reference("bert-generic-tokenizer")
    assert type(tokenizer).__name__ == "TokenizersBackend" and "token_type_ids" not in tokenizer("a text")
    enc = Encoder(family_dir("bert-generic-tokenizer"), variant="fp32")
    assert enc.manifest.input_names == interface.INPUT_NAMES
    assert enc.embed(["I love Korea"], pooling="pooler").shape == (1, enc.hidden_size)


# -- every command -----------------------------------------------------------------------------------------------


def test_embed_cli_and_a_resumed_job_give_the_library_s_vectors(
    family_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    from bert_onnx.jobs import embed_file, parts_dir

    folder = family_dir("xlm-roberta")
    texts = list(documentation_paragraphs())[:30]
    source = write_lines(tmp_path / "texts.txt", texts)
    recipe = EmbedRecipe(pooling="mean", normalize=True)
    expected = Encoder(folder, variant="fp32").embed_recipe(texts, recipe)

    out = tmp_path / "cli.npy"
    run = run_cli(*embed_args(folder, source, out, "--pooling", "mean", "--normalize", "--quiet"))
    assert run.returncode == 0, run.describe()
    np.testing.assert_array_equal(np.load(out), expected)

    seen = 0

    def interrupt(count: int) -> None:
        nonlocal seen
        seen += count
        if seen > 12:
            raise KeyboardInterrupt

    job = tmp_path / "job.npy"
    encoder = Encoder(folder, variant="fp32")
    with pytest.raises(KeyboardInterrupt):
        embed_file(encoder, source, job, recipe, chunk_size=10, progress=interrupt)
    assert len(list(parts_dir(job).glob("part-*.npy"))) == 1 and not job.exists()
    assert embed_file(encoder, source, job, recipe, chunk_size=10, resume=True) == (30, encoder.hidden_size)
    np.testing.assert_array_equal(np.load(job), expected)

    assert_error(
        run_cli(*embed_args(family_dir("modernbert"), source, tmp_path / "p.npy", "--pooling", "pooler")),
        ("modernbert models have no pooler",),
    )


def test_ray_s_batch_call_embeds_a_family_without_segment_ids(family_dir: Callable[[str], Path]) -> None:
    pytest.importorskip("ray", reason="Ray is the [ray] extra, which the test environment installs")
    from bert_onnx.integrations.ray import RayEmbedder

    folder = family_dir("distilbert")
    texts = list(documentation_paragraphs())[:12]
    embedder = RayEmbedder(str(folder), pooling="mean")
    result = embedder({"id": np.arange(len(texts)), "text": np.array(texts, dtype=object)})
    expected = Encoder(folder, variant="fp32").embed(texts, pooling="mean")
    np.testing.assert_array_equal(np.stack(list(result["embedding"])), expected)
    with pytest.raises(InvalidValueError, match="distilbert models have no pooler"):
        RayEmbedder(str(folder), pooling="pooler")


@pytest.fixture(scope="module")
def distilbert_server(family_dir: Callable[[str], Path]) -> Iterator[Any]:
    from serve_helpers import start_server

    server = start_server(family_dir("distilbert"), "--pooling", "mean", "--normalize")
    yield server
    assert server.stop() == 0, server.stderr()


def test_serve_answers_for_a_family_without_pooler_or_segment_ids(
    distilbert_server: Any, family_dir: Callable[[str], Path]
) -> None:
    from serve_helpers import call

    texts = ["I love Korea", *list(documentation_paragraphs())[:5]]
    enc = Encoder(family_dir("distilbert"), variant="fp32")
    reply = call(distilbert_server, "POST", "/v1/embeddings", {"model": "m", "input": texts})
    assert reply.status == 200, reply.body
    vectors = np.array([d["embedding"] for d in reply.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, enc.embed(texts, pooling="mean", normalize=True), atol=1e-6)
    refused = call(distilbert_server, "POST", "/embed", {"input": texts, "pooling": "pooler"})
    assert refused.status == 422 and "distilbert models have no pooler" in refused.error()
    encoded = call(distilbert_server, "POST", "/encode", {"input": ["I love Korea"], "outputs": ["pooler_output"]})
    assert encoded.status == 422 and "is not one of last_hidden_state, hidden_states.0" in encoded.error()


def test_verify_and_tune_a_family_other_than_bert(family_dir: Callable[[str], Path], tmp_path: Path) -> None:
    folder = family_dir("modernbert")
    verified = run_cli("verify", folder, "--json")
    assert verified.returncode == 0, verified.describe()
    results = {choice["name"]: choice["status"] for choice in json.loads(verified.stdout)["choices"]}
    assert {name: results.get(name) for name in _variants()} == dict.fromkeys(_variants(), "ok"), results
    outcomes, path, pick = tuning.tune(folder, rounds=1, sample=8, profile_dir=tmp_path)
    assert pick.name in _variants() and path.is_file()
    assert all(outcome.passed for outcome in outcomes if outcome.name in _variants())


def test_albert_s_shared_layer_is_int8_at_every_call_and_stored_once(family_dir: Callable[[str], Path]) -> None:
    """ALBERT runs one layer's weights once per layer; the export reads them through an Identity after the first
    call. int8 must quantize every call (not only the first), keep one int8 copy, and take each call's
    down-projection as a rung of its ladder."""
    import onnx

    from bert_onnx.export.int8 import quantize_per_row

    folder = family_dir("albert")
    manifest = Manifest.read(folder)
    assert "0 FFN down-projection(s) kept in float" in manifest.variants["int8"].gate
    graph = onnx.load(str(folder / "model.int8.onnx")).graph
    layers = manifest.num_layers
    ops = [node.op_type for node in graph.node]
    # per layer: query/key/value as one, the attention output, the FFN in and out; plus the embedding projection
    assert ops.count("MatMulIntegerToFloat") == 1 + 4 * layers
    assert ops.count("MatMul") == 2 * layers, "only the attention's activation x activation products stay float"
    assert len([i for i in graph.initializer if i.name.endswith("/weight")]) == 1 + 4
    fp32 = onnx.load(str(folder / interface.MODEL_FILE))
    down = int8_ladder(folder / interface.MODEL_FILE, manifest.model_family.down_projections, rungs=layers)[-1]
    kept = quantize_per_row(fp32, down)
    assert [node.op_type for node in kept.graph.node].count("MatMul") == 3 * layers


@pytest.mark.fast
def test_a_family_without_fusions_must_say_opt_and_fp16_are_not_offered() -> None:
    import dataclasses

    with pytest.raises(InvalidValueError, match="fusion=None, so not_offered must list opt, fp16"):
        dataclasses.replace(families.BERT, fusion=None)
    bare = dataclasses.replace(families.BERT, fusion=None, not_offered={"opt": "no fusions", "fp16": "no fusions"})
    with pytest.raises(InvalidValueError, match=r"opt are not offered for bert models \(opt: no fusions\)"):
        bare.check_variants(("fp32", "opt"))
