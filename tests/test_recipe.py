"""EmbedRecipe (what a vector is) and Batching (how texts share a model call): validated once, read by Encoder.embed,
the CLI, Ray and resumable jobs; and how a folder's own recipe and a caller's explicit fields make the recipe run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bert_onnx import cli
from bert_onnx.manifest import RecipeRecord
from bert_onnx.runtime import COMBINES, POOLINGS, EmbedRecipe
from bert_onnx.runtime.recipe import Batching, RecipeNotUnderstoodError, recipe_for

pytestmark = pytest.mark.fast  # the edit-loop tier: tiny checkpoint, in process


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pooling": "avg"}, f"pooling='avg' is not one of {', '.join(POOLINGS)}"),
        ({"pooling": ("mean", "pooler")}, "pooling contains 'pooler'; modes pooled together are cls, mean, max"),
        ({"pooling": ()}, "names no mode"),
        ({"combine": "sum"}, "combine='sum' is not one of concat, mean"),
        ({"pooling": "pooler", "layers": (1,)}, "takes no layers"),
        ({"layers": ()}, "non-empty"),
        ({"layers": "1"}, "must be an int or a non-empty sequence"),
        ({"layers": (1.0,)}, "hidden-state indices are ints"),
        ({"normalize": "yes"}, "normalize='yes' must be True or False"),
        ({"truncation": 0}, "truncation=0 must be True or False"),
        ({"max_length": 1}, "max_length=1 must be an int >= 2"),
        ({"dimensions": 0}, "dimensions=0 must be a positive int"),
        ({"dimensions": True}, "dimensions=True must be a positive int"),
        ({"include_prompt": "no"}, "include_prompt='no' must be True or False"),
        ({"dense": "2_Dense"}, "must be a sequence of the folder's dense layer names"),
        ({"pooling": "pooler", "dense": ("2_Dense",)}, "takes no dense layers"),
    ],
)
def test_bad_fields_are_refused_once_by_name(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EmbedRecipe(**fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"batch_size": 0}, "batch_size=0 must be a positive int"),
        ({"batch_size": 2.5}, "batch_size=2.5 must be a positive int"),
        ({"max_tokens": 1}, "max_tokens=1 must be an int >= max_length"),
    ],
)
def test_bad_batching_is_refused_by_name(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Batching(**fields)


def test_batching_is_not_part_of_the_recipe() -> None:
    """What changes a vector and what changes only speed are two objects: a recipe has no batch fields."""
    assert not {"batch_size", "max_tokens"} & set(EmbedRecipe().to_dict())
    with pytest.raises(TypeError):
        EmbedRecipe(batch_size=8)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"max_tokens=100 must be an int >= max_length \(128\)"):
        Batching(max_tokens=100).check_length(128)


def test_fields_are_normalized_hashable_and_round_trip() -> None:
    recipe = EmbedRecipe(pooling="mean", layers=[-2, -1], combine="mean", normalize=True)  # type: ignore[arg-type]
    assert recipe.layers == (-2, -1)
    several = EmbedRecipe(pooling=["cls", "max"], dense=["2_Dense"], prompt="query: ")  # type: ignore[arg-type]
    assert several.pooling == ("cls", "max") and several.dense == ("2_Dense",)
    assert EmbedRecipe.from_dict(several.to_dict()) == several and hash(several)
    assert EmbedRecipe(pooling=["mean"]).pooling == "mean"  # type: ignore[arg-type]
    assert EmbedRecipe(prompt="").prompt is None  # as sentence-transformers: an empty prompt is none
    assert EmbedRecipe(pooling=("cls", "mean"), dimensions=10).dim(384) == 10
    assert EmbedRecipe(pooling=("cls", "mean")).dim(384) == 768
    assert EmbedRecipe(layers=3).layers == (3,)  # type: ignore[arg-type]
    assert hash(recipe) == hash(EmbedRecipe.from_dict(recipe.to_dict()))
    assert EmbedRecipe.from_dict(recipe.to_dict()) == recipe
    assert recipe.dim(384) == 384 and EmbedRecipe(layers=(0, 6)).dim(384) == 768
    with pytest.raises(ValueError, match="unknown recipe field"):
        EmbedRecipe.from_dict({"pooling": "cls", "stride": 2})
    with pytest.raises(ValueError, match=r"layer 7 is out of range: this model has hidden states 0\.\.6"):
        EmbedRecipe(layers=(7,)).pooling_for(6)


@pytest.mark.parametrize(("flag", "choices"), [("--pooling", POOLINGS), ("--combine", COMBINES)])
def test_the_cli_offers_exactly_the_recipe_choices(
    flag: str, choices: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["embed", "DIR", "-i", "in.txt", "-o", "out.npy", flag, "nope"])
    listed = capsys.readouterr().err.split("choose from ", 1)[1].split(")")[0]
    assert tuple(c.strip(" '") for c in listed.split(",")) == choices


def test_embed_keywords_and_a_recipe_give_the_same_vectors(encoder: Callable[[str], Any]) -> None:
    enc = encoder("tiny")
    texts = ["I love Korea", "a longer text with several more words in it", ""]
    recipe = EmbedRecipe(pooling="mean", layers=(-2, -1), normalize=True)
    np.testing.assert_array_equal(
        enc.embed_recipe(texts, recipe, batching=Batching(batch_size=2)),
        enc.embed(texts, pooling="mean", layers=[-2, -1], normalize=True, batch_size=2),
    )
    with pytest.raises(TypeError, match="must be a Batching"):
        enc.embed_recipe(texts, recipe, batching={"batch_size": 2})
    with pytest.raises(TypeError, match="must be an EmbedRecipe"):
        enc.embed_recipe(texts, {"pooling": "mean"})


def test_cli_ray_engine_receives_the_whole_recipe(
    export_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test that would have caught ``--no-truncation`` being dropped on the way to Ray: whatever the engine,
    the CLI builds one EmbedRecipe from its flags and hands it over whole."""
    from bert_onnx.integrations import ray as ray_integration

    seen: dict[str, Any] = {}

    def fake_embed_to_parquet(*args: Any, recipe: EmbedRecipe, batching: Batching, **kwargs: Any) -> dict[str, Any]:
        seen["recipe"], seen["batching"] = recipe, batching
        return {"rows": 0, "parts": 0, "bad_rows": []}

    monkeypatch.setattr(ray_integration, "embed_to_parquet", fake_embed_to_parquet)
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "x"}\n')
    flags = ["--pooling", "mean", "--layers=-2:", "--normalize", "--max-length", "64", "--no-truncation"]
    argv = ["embed", str(export_dir("tiny")), "--engine", "ray", "-i", str(source), "-o", str(tmp_path / "out")]
    assert cli.main([*argv, *flags, "--batch-size", "8", "--quiet"]) == 0
    assert seen["recipe"] == EmbedRecipe(pooling="mean", layers=(1, 2), normalize=True, max_length=64, truncation=False)
    assert seen["batching"] == Batching(batch_size=8)


def test_ray_embedder_reports_a_too_long_text_when_truncation_is_off(export_dir: Callable[[str], Path]) -> None:
    """RayEmbedder works outside Ray too (it is a plain callable); a text over max_length is a bad row there, and
    truncated when truncation is on."""
    from bert_onnx.integrations.ray import RayEmbedder

    texts = np.array(["short", "word " * 40], dtype=object)
    strict = RayEmbedder(export_dir("tiny"), recipe=EmbedRecipe(max_length=16, truncation=False))
    out = strict({"text": texts})
    assert out["error"][0] is None and not np.isnan(out["embedding"][0]).any()
    assert out["error"][1] == "text is 42 tokens long, over max_length=16"
    assert np.isnan(out["embedding"][1]).all()
    lenient = RayEmbedder(export_dir("tiny"), max_length=16)
    assert list(lenient({"text": texts})["error"]) == [None, None]
    with pytest.raises(TypeError, match="pass recipe= or its fields"):
        RayEmbedder(export_dir("tiny"), recipe=EmbedRecipe(), pooling="mean")


ST = RecipeRecord(
    origin="sentence-transformers",
    recipe={"pooling": "mean", "normalize": True, "max_length": 256, "prompt": "query: ", "include_prompt": False},
    prompts={"query": "query: ", "passage": "passage: ", "document": ""},
    default_prompt_name="query",
    files=("modules.json",),
)
UNKNOWN = RecipeRecord(
    origin="sentence-transformers",
    understood=False,
    prompts={"query": "query: "},
    problems=("modules.json: module 2 ('2', type 'my.Module') is not a module bert-onnx applies",),
)


def test_a_folder_recipe_is_the_default_and_each_field_given_replaces_its_own() -> None:
    assert recipe_for(RecipeRecord()) == EmbedRecipe(), "a folder without a recipe keeps embed's own default"
    own = EmbedRecipe(pooling="mean", normalize=True, max_length=256, prompt="query: ", include_prompt=False)
    assert recipe_for(ST) == own
    assert recipe_for(ST, pooling=None, normalize=None) == own, "None means: not given"
    assert recipe_for(ST, pooling="cls") == own.replace(pooling="cls")
    assert recipe_for(ST, normalize=False, dimensions=64) == own.replace(normalize=False, dimensions=64)
    assert recipe_for(ST, prompt_name="passage").prompt == "passage: "
    assert recipe_for(ST, prompt_name="document").prompt is None
    assert recipe_for(ST, prompt="").prompt is None, "an explicit empty prompt turns the default prompt off"
    with pytest.raises(ValueError, match=r"prompt_name='title' is not one of this model's prompts \('query', "):
        recipe_for(ST, prompt_name="title")
    with pytest.raises(ValueError, match="not both"):
        recipe_for(ST, prompt="x", prompt_name="query")
    with pytest.raises(TypeError, match=r"unknown recipe field.*batch_size"):
        recipe_for(ST, batch_size=3)


def test_a_recipe_not_understood_is_never_applied_and_asks_for_one() -> None:
    with pytest.raises(
        RecipeNotUnderstoodError,
        match=r"DIR carries a sentence-transformers recipe that was not "
        r"understood at export \(modules.json: module 2 .*my.Module.*\).*name one",
    ):
        recipe_for(UNKNOWN, "DIR")
    assert recipe_for(UNKNOWN, "DIR", pooling="mean") == EmbedRecipe(pooling="mean"), "over embed's own default"
    assert recipe_for(UNKNOWN, "DIR", prompt_name="query") == EmbedRecipe(prompt="query: ")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"origin": "mine"}, "origin 'mine' is not one of none, sentence-transformers"),
        ({"recipe": {"pooling": "mean"}}, "origin 'none' carries no recipe"),
        ({"origin": "sentence-transformers", "understood": False}, "not understood without saying why"),
        ({"origin": "sentence-transformers", "default_prompt_name": "q"}, "default prompt 'q' is not among"),
    ],
)
def test_a_malformed_recipe_record_is_a_damaged_folder(fields: dict[str, Any], message: str) -> None:
    from bert_onnx.manifest import ModelFolderError

    with pytest.raises(ModelFolderError, match=message):
        RecipeRecord.from_dict(fields)


def test_the_cli_takes_the_input_file_as_it_is_typed(tmp_path: Path) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["embed", "DIR", "texts.txt", "-o", "out.npy"])
    assert cli._input_path(args) == "texts.txt"
    assert cli._input_path(parser.parse_args(["embed", "DIR", "-i", "texts.txt", "-o", "out.npy"])) == "texts.txt"
    with pytest.raises(ValueError, match="two inputs"):
        cli._input_path(parser.parse_args(["embed", "DIR", "a.txt", "-i", "b.txt", "-o", "out.npy"]))
    with pytest.raises(SystemExit):
        cli.main(["embed", "DIR", "-o", "out.npy"])
