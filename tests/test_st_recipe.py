"""A model's own recipe: sentence-transformers layouts read at export and made the default, against
``SentenceTransformer.encode`` computed here.

The checkpoints (scripts/checkpoints_st.py): the real all-MiniLM-L6-v2 as its authors ship it (mean pooling,
Normalize, max_seq_length 256), and layouts saved by sentence-transformers from the MiniLM and tiny weights: CLS
pooling with a Dense layer and no Normalize, max pooling in sentence-transformers 2's legacy files (with
do_lower_case over a cased tokenizer), prompts left out of pooling, and truncate_dim. With no recipe arguments,
``Encoder.embed``, ``bert-onnx embed`` and a real server's ``/v1/embeddings`` (the openai client) must give the same
vectors within 1e-5, texts longer than max_seq_length included. The pooling registry is checked mode by mode
against sentence-transformers' own ``Pooling`` module; malformed and custom layouts are refused or marked.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import assert_error, checkpoint_path, run_cli, write_lines
from serve_helpers import start_server

from bert_onnx import interface
from bert_onnx.export.corpus import documentation_paragraphs
from bert_onnx.runtime import EmbedRecipe, Encoder
from bert_onnx.runtime.pooling import POOLINGS, TOKEN_POOLINGS, Pooling
from bert_onnx.runtime.recipe import RecipeNotUnderstoodError

TOLERANCE = 1e-5
PARAGRAPHS = documentation_paragraphs()
LONG = "Every token of this text counts, and there are far more of them than the model's limit allows. " * 30
TEXTS = [
    "I love Korea",
    "Seoul is a LARGE City; Busan is by the SEA.",
    "héllo wörld — 日本語のテキスト 🙂",
    *PARAGRAPHS[:6],
    *sorted(PARAGRAPHS, key=len)[-2:],  # the longest paragraphs
    LONG,  # > 512 tokens: over every layout's max_seq_length
]
LAYOUTS = ["st-minilm", "st-cls-dense", "st-prompts", "st-truncate-dim", "tiny-st-max"]


@pytest.fixture(scope="session")
def st_model() -> Callable[[str], Any]:
    """``st_model(key)``: sentence-transformers' own model of the checkpoint, loaded once."""
    from sentence_transformers import SentenceTransformer

    models: dict[str, Any] = {}

    def get(key: str) -> Any:
        if key not in models:
            models[key] = SentenceTransformer(str(checkpoint_path(key)), device="cpu")
        return models[key]

    return get


def reference(model: Any, texts: list[str], **kwargs: Any) -> np.ndarray:
    """``SentenceTransformer.encode``, normalized after a cut to ``truncate_dim`` when the model normalizes: the
    renormalization bert-onnx promises (sentence-transformers' own encode leaves a cut unit vector shorter)."""
    truncating = kwargs.get("truncate_dim") or model.truncate_dim
    normalizes = any(type(m).__name__ == "Normalize" for m in model)
    return np.asarray(model.encode(texts, normalize_embeddings=bool(truncating and normalizes), **kwargs))


def worst(got: np.ndarray, expected: np.ndarray) -> float:
    assert got.shape == expected.shape, (got.shape, expected.shape)
    return float(np.abs(np.asarray(got, dtype=np.float64) - expected).max())


# -- the pooling registry, mode by mode, against sentence-transformers' Pooling ------------------------------------


def _batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random token states and a right-padded mask: row lengths 1..T, one row exactly the width."""
    rng = np.random.default_rng(seed)
    states = rng.standard_normal((6, 9, 5)).astype(np.float32)
    lengths = [1, 2, 3, 5, 8, 9]
    mask = np.array([[1] * n + [0] * (9 - n) for n in lengths], dtype=np.int64)
    return states, mask


@pytest.mark.fast
@pytest.mark.parametrize("prompt_length", [0, 2, 4])
@pytest.mark.parametrize(
    "modes", [(mode,) for mode in TOKEN_POOLINGS] + [("cls", "max", "mean"), ("weightedmean", "lasttoken")]
)
def test_each_pooling_mode_is_sentence_transformers_arithmetic(modes: tuple[str, ...], prompt_length: int) -> None:
    """Every mode, alone and concatenated, with a prompt's tokens left out (include_prompt false) or not; rows
    shorter than the prompt pool nothing, and both sides agree on what that gives."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

    states, mask = _batch(len(modes) + prompt_length)
    module = STPooling(5, pooling_mode=modes if len(modes) > 1 else modes[0], include_prompt=prompt_length == 0)
    features = {"token_embeddings": torch.from_numpy(states), "attention_mask": torch.from_numpy(mask)}
    if prompt_length:
        features["prompt_length"] = prompt_length
    expected = module(features)["sentence_embedding"].numpy()
    ours = Pooling(modes, None, "concat", False, prompt_length=prompt_length)
    got = ours({interface.LAST_HIDDEN_STATE: states}, mask)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert ours.dim(5) == 5 * len(modes)


@pytest.mark.fast
def test_rows_left_with_no_token_are_found_before_pooling() -> None:
    """What the parity test above pools as sentence-transformers does (-inf for max, zeros for mean), callers that
    know their texts refuse first: a row no longer than the left-out prompt has no token to pool."""
    lengths = [1, 2, 3, 5, 8, 9]  # as in _batch
    left_out = Pooling(("max", "mean"), None, "concat", False, prompt_length=3)
    assert left_out.unpooled(lengths) == [0, 1, 2]
    states, mask = _batch(0)
    pooled = left_out({interface.LAST_HIDDEN_STATE: states}, mask)
    assert not np.isfinite(pooled[:3]).all() and np.isfinite(pooled[3:]).all()  # why the rows are refused
    with pytest.raises(ValueError, match=r"texts\[10\] \(and 2 other text\(s\)\) leaves no token to pool"):
        left_out.check_tokens(lengths, first_index=10)
    left_out.check_tokens(lengths[3:])
    assert Pooling(("max",), None, "concat", False).unpooled(lengths) == []  # the prompt is pooled
    assert Pooling(("pooler",), None, "concat", False, prompt_length=3).unpooled(lengths) == []  # no token pooled


@pytest.mark.fast
def test_an_unknown_pooling_mode_raises_naming_the_valid_ones() -> None:
    assert set(POOLINGS) == {"pooler", *TOKEN_POOLINGS}
    with pytest.raises(ValueError, match=f"pooling='sum' is not one of {', '.join(POOLINGS)}"):
        EmbedRecipe(pooling="sum")
    with pytest.raises(ValueError, match="pooling contains 'sum'"):
        EmbedRecipe(pooling=("mean", "sum"))


# -- every layout, every path, no recipe arguments -------------------------------------------------------------


@pytest.mark.parametrize("key", LAYOUTS)
def test_encoder_embed_with_no_arguments_gives_sentence_transformers_vectors(
    key: str, export_dir: Callable[[str], Path], st_model: Callable[[str], Any]
) -> None:
    encoder = Encoder(export_dir(key))
    model = st_model(key)
    assert worst(encoder.embed(TEXTS), reference(model, TEXTS)) <= TOLERANCE
    assert encoder.describe()["recipe_origin"] == "sentence-transformers"
    assert encoder.default_recipe.max_length == model.max_seq_length
    assert encoder.dim() == (model.truncate_dim or model.get_embedding_dimension())


def test_the_real_checkpoint_reads_as_its_authors_wrote_it(export_dir: Callable[[str], Path]) -> None:
    encoder = Encoder(export_dir("st-minilm"))
    assert encoder.default_recipe == EmbedRecipe(pooling="mean", normalize=True, max_length=256)
    record = encoder.manifest.recipe
    assert record.files[:3] == ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
    assert record.modules == (".: Transformer", "1_Pooling: Pooling", "2_Normalize: Normalize")
    # Today's default ([CLS], not normalized, 512 tokens) is far from the model's vectors: the reason for all this.
    plain = encoder.embed_recipe(TEXTS, EmbedRecipe())
    own = encoder.embed(TEXTS)
    cosines = (plain * own).sum(axis=1) / np.linalg.norm(plain, axis=1)
    assert cosines.min() < 0.9


def test_explicit_arguments_override_the_folder_recipe(
    export_dir: Callable[[str], Path], st_model: Callable[[str], Any]
) -> None:
    encoder, model = Encoder(export_dir("st-minilm")), st_model("st-minilm")
    got = encoder.embed(TEXTS[:4], pooling="cls")  # the rest of the recipe stays: normalized, 256 tokens
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    unnormalized = encoder.embed(TEXTS, normalize=False)
    assert worst(unnormalized / np.linalg.norm(unnormalized, axis=1, keepdims=True), reference(model, TEXTS)) < 1e-5
    assert np.abs(np.linalg.norm(unnormalized, axis=1) - 1).max() > 0.1
    longer = encoder.embed([LONG], max_length=512)
    assert worst(encoder.embed([LONG]), reference(model, [LONG])) <= TOLERANCE
    assert worst(longer, reference(model, [LONG])) > 1e-3, "the model's 256 tokens, unless told otherwise"


def test_prompts_left_out_of_pooling(export_dir: Callable[[str], Path], st_model: Callable[[str], Any]) -> None:
    """The default prompt ("query: "), another by name, and none; with include_prompt false the prompt's
    tokens ([CLS] among them) are not pooled, exactly as sentence-transformers counts them."""
    encoder, model = Encoder(export_dir("st-prompts")), st_model("st-prompts")
    assert encoder.manifest.recipe.default_prompt_name == "query"
    assert encoder.prompt_length("query: ", 256) == 3  # [CLS] query :
    for kwargs in ({"prompt_name": "passage"}, {"prompt": ""}, {"prompt_name": "document"}, {"prompt": "title: "}):
        assert worst(encoder.embed(TEXTS, **kwargs), reference(model, TEXTS, **kwargs)) <= TOLERANCE, kwargs
    with_prompt = encoder.embed(TEXTS, include_prompt=True)
    assert worst(with_prompt, encoder.embed(TEXTS)) > 1e-3, "leaving the prompt out must change the vectors"
    model[1].include_prompt = True
    try:
        assert worst(with_prompt, reference(model, TEXTS)) <= TOLERANCE
    finally:
        model[1].include_prompt = False
    with pytest.raises(ValueError, match=r"prompt_name='title' is not one of this model's prompts \('query', "):
        encoder.embed(TEXTS, prompt_name="title")


def test_matryoshka_dimensions(export_dir: Callable[[str], Path], st_model: Callable[[str], Any]) -> None:
    encoder, model = Encoder(export_dir("st-truncate-dim")), st_model("st-truncate-dim")
    assert encoder.dim() == 128 == model.truncate_dim
    for n in (1, 64, 384):
        got = encoder.embed(TEXTS, dimensions=n)
        assert worst(got, reference(model, TEXTS, truncate_dim=n)) <= TOLERANCE, n
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)  # cut, then renormalized
    plain = Encoder(export_dir("st-cls-dense"))  # no Normalize: a cut is only a cut
    full = plain.embed(TEXTS)
    np.testing.assert_array_equal(plain.embed(TEXTS, dimensions=10), full[:, :10])
    for bad in (0, -1, 385):
        with pytest.raises(ValueError, match=r"dimensions=.* must be (in \[1, 384\]|a positive int)"):
            encoder.embed(TEXTS, dimensions=bad)
    with pytest.raises(ValueError, match=r"dimensions=97 must be in \[1, 96\]"):
        plain.embed(TEXTS, dimensions=97)


def test_bert_onnx_embed_with_no_recipe_flags(
    export_dir: Callable[[str], Path], st_model: Callable[[str], Any], tmp_path: Path
) -> None:
    """``bert-onnx embed DIR FILE`` (the input positional, as people type it) on every layout."""
    source = write_lines(tmp_path / "texts.txt", TEXTS)
    for key in LAYOUTS:
        out = tmp_path / f"{key}.npy"
        run = run_cli("embed", export_dir(key), source, "-o", out, "--quiet")
        assert run.returncode == 0, run.describe()
        assert worst(np.load(out), reference(st_model(key), TEXTS)) <= TOLERANCE, key
    out = tmp_path / "passage.npy"
    run = run_cli("embed", export_dir("st-prompts"), "-i", source, "-o", out, "--prompt-name", "passage", "--quiet")
    assert run.returncode == 0, run.describe()
    assert worst(np.load(out), reference(st_model("st-prompts"), TEXTS, prompt_name="passage")) <= TOLERANCE
    out = tmp_path / "dims.npy"
    run = run_cli("embed", export_dir("st-minilm"), source, "-o", out, "--dimensions", "32", "--quiet")
    assert run.returncode == 0, run.describe()
    assert worst(np.load(out), reference(st_model("st-minilm"), TEXTS, truncate_dim=32)) <= TOLERANCE


def test_a_server_with_no_recipe_flags_and_the_openai_client(
    export_dir: Callable[[str], Path], st_model: Callable[[str], Any]
) -> None:
    import openai

    for key in LAYOUTS:
        model = st_model(key)
        server = start_server(export_dir(key))
        try:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
            answer = client.embeddings.create(model=key, input=TEXTS)
            got = np.array([item.embedding for item in answer.data], dtype=np.float32)
            assert worst(got, reference(model, TEXTS)) <= TOLERANCE, key
            if key == "st-minilm":
                cut = client.embeddings.create(model=key, input=TEXTS, dimensions=48)
                got = np.array([item.embedding for item in cut.data], dtype=np.float32)
                assert worst(got, reference(model, TEXTS, truncate_dim=48)) <= TOLERANCE
                with pytest.raises(openai.UnprocessableEntityError, match=r"dimensions=385 must be in \[1, 384\]"):
                    client.embeddings.create(model=key, input="x", dimensions=385)
            if key == "st-prompts":
                named = client.embeddings.create(model=key, input=TEXTS, extra_body={"prompt_name": "passage"})
                got = np.array([item.embedding for item in named.data], dtype=np.float32)
                assert worst(got, reference(model, TEXTS, prompt_name="passage")) <= TOLERANCE
                with pytest.raises(openai.UnprocessableEntityError, match="token ids"):  # refused: a prompt, or ids
                    client.embeddings.create(model=key, input=[[1000, 1001]])
        finally:
            assert server.stop() == 0, server.stderr()


def test_info_says_what_the_folder_carries(export_dir: Callable[[str], Path]) -> None:
    run = run_cli("info", export_dir("st-prompts"), "--no-verify")
    assert run.returncode == 0, run.describe()
    assert "pooling='mean', include_prompt=False, normalize=True, prompt='query: '" in run.stdout
    assert "[from sentence-transformers (modules.json" in run.stdout
    assert re.search(r"prompts +query='query: ', document='', passage='passage: '; default: query", run.stdout)
    run = run_cli("info", export_dir("tiny"), "--no-verify")
    assert re.search(r"recipe +none: the checkpoint had no sentence-transformers files", run.stdout), run.stdout


# -- the tiny legacy layout in process, and what a folder without a recipe does -------------------------------


@pytest.mark.fast
def test_a_legacy_layout_lowercases_and_cuts_as_sentence_transformers(
    export_dir: Callable[[str], Path], st_model: Callable[[str], Any]
) -> None:
    encoder = Encoder(export_dir("tiny-st-max"))
    assert encoder.default_recipe == EmbedRecipe(pooling="max", max_length=24)
    assert encoder.tokenizer.tokenize("Seoul") == ["seoul"], "do_lower_case over a cased tokenizer"
    texts = ["Seoul is LARGE", "seoul is large", LONG]
    got = encoder.embed(texts)
    np.testing.assert_array_equal(got[0], got[1])
    assert worst(got, reference(st_model("tiny-st-max"), texts)) <= TOLERANCE


@pytest.mark.fast
def test_a_folder_from_before_recipes_reads_as_none(export_dir: Callable[[str], Path], tmp_path: Path) -> None:
    folder = tmp_path / "old"
    shutil.copytree(export_dir("tiny"), folder)
    manifest = json.loads((folder / interface.MANIFEST_FILE).read_text())
    assert manifest["recipe"]["origin"] == "none"
    del manifest["recipe"]
    manifest["format_version"] = 1
    (folder / interface.MANIFEST_FILE).write_text(json.dumps(manifest))
    encoder = Encoder(folder)
    assert encoder.default_recipe == EmbedRecipe()
    assert encoder.describe()["recipe"].startswith("none:")
    np.testing.assert_array_equal(encoder.embed(["I love Korea"]), encoder.embed(["I love Korea"], pooling="cls"))


# -- layouts bert-onnx does not understand -------------------------------------------------------------------


def _edit_modules(extra: dict[str, Any]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        path = folder / "modules.json"
        modules = json.loads(path.read_text())
        path.write_text(json.dumps([*modules, extra]))

    return edit


def _write(name: str, text: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(text)

    return edit


BAD_LAYOUTS = [
    ("modules-not-json", _write("modules.json", "[{"), ("modules.json: not valid JSON",)),
    (
        "custom-module",
        _edit_modules({"idx": 2, "name": "2", "path": "2_Mine", "type": "my_package.MyPooling"}),
        ("modules.json: module 2", "'my_package.MyPooling'", "is not a module bert-onnx applies"),
    ),
    ("pooling-not-json", _write("1_Pooling/config.json", "{,}"), ("1_Pooling/config.json: not valid JSON",)),
    (
        "pooling-unknown-mode",
        _write("1_Pooling/config.json", json.dumps({"embedding_dimension": 32, "pooling_mode": "median"})),
        ("1_Pooling/config.json: pooling mode ['median'] is not one of cls, mean, max", "module 1"),
    ),
    (
        "dense-unknown-activation",
        lambda folder: (
            _edit_modules({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})(
                folder
            ),
            _write(
                "2_Dense/config.json",
                json.dumps({"in_features": 32, "out_features": 8, "activation_function": "my_package.Swish"}),
            )(folder),
        ),
        ("2_Dense/config.json: activation 'my_package.Swish' is not one bert-onnx applies", "module 2"),
    ),
    (
        "normalize-before-dense",
        lambda folder: (
            _edit_modules({"name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})(
                folder
            ),
            _edit_modules({"name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})(folder),
        ),
        ("modules.json: modules ['Transformer', 'Pooling', 'Normalize', 'Dense'] are not in an order",),
    ),
    (
        "default-prompt-missing",
        _write("config_sentence_transformers.json", json.dumps({"prompts": {"q": "q: "}, "default_prompt_name": "x"})),
        ("config_sentence_transformers.json: default_prompt_name 'x' is not among its prompts",),
    ),
    (
        "truncate-dim-too-large",
        _write("config_sentence_transformers.json", json.dumps({"truncate_dim": 33})),
        ("config_sentence_transformers.json: truncate_dim=33 is not in [1, 32]",),
    ),
]


@pytest.fixture()
def broken(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, tuple[str, ...]]:
    _, edit, needles = request.param
    folder = tmp_path / "checkpoint"
    shutil.copytree(checkpoint_path("tiny-st-max"), folder)
    edit(folder)
    return folder, needles


@pytest.mark.fast
@pytest.mark.parametrize("broken", BAD_LAYOUTS, ids=[case[0] for case in BAD_LAYOUTS], indirect=True)
def test_a_layout_not_understood_is_refused_or_marked_and_never_applied(
    broken: tuple[Path, tuple[str, ...]], tmp_path: Path
) -> None:
    from bert_onnx.export import export_model
    from bert_onnx.export.sentence_transformers import LayoutError

    checkpoint, needles = broken
    target = tmp_path / "model"
    with pytest.raises(LayoutError) as refused:
        export_model(str(checkpoint), target, log=lambda m: None)
    for needle in needles:
        assert needle in str(refused.value)
    assert "--allow-unknown-modules" in str(refused.value)
    assert not target.exists(), "a refused export writes nothing"

    export_model(str(checkpoint), target, log=lambda m: None, allow_unknown_modules=True)
    encoder = Encoder(target)
    assert not encoder.manifest.recipe.understood and needles[0] in encoder.describe()["recipe"]
    assert interface.RECIPE_WEIGHTS_FILE not in encoder.manifest.files
    with pytest.raises(RecipeNotUnderstoodError, match="was not understood at export"):
        encoder.embed(["I love Korea"])
    assert encoder.embed(["I love Korea"], pooling="mean").shape == (1, 32), "an explicit recipe runs"


def test_a_layout_not_understood_through_the_command_line(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(checkpoint_path("tiny-st-max"), checkpoint)
    BAD_LAYOUTS[1][1](checkpoint)
    model, texts = tmp_path / "model", write_lines(tmp_path / "texts.txt", ["I love Korea"])
    assert_error(run_cli("export", checkpoint, "-o", model), ("'my_package.MyPooling'", "--allow-unknown-modules"))
    run = run_cli("export", checkpoint, "-o", model, "--allow-unknown-modules")
    assert run.returncode == 0, run.describe()
    info = run_cli("info", model, "--no-verify")
    assert "NOT UNDERSTOOD, nothing of it is applied: modules.json: module 2" in info.stdout, info.describe()
    assert_error(run_cli("embed", model, texts, "-o", tmp_path / "out.npy"), ("was not understood at export",))
    run = run_cli("embed", model, texts, "-o", tmp_path / "out.npy", "--pooling", "mean")
    assert run.returncode == 0, run.describe()
