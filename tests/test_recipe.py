"""EmbedRecipe: one validated description of an embedding, read by Encoder.embed, the CLI, Ray and resumable jobs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bert_onnx import cli
from bert_onnx.runtime import COMBINES, POOLINGS, EmbedRecipe

pytestmark = pytest.mark.fast  # the edit-loop tier: tiny checkpoint, in process


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pooling": "avg"}, "pooling='avg' is not one of cls, pooler, mean"),
        ({"combine": "sum"}, "combine='sum' is not one of concat, mean"),
        ({"pooling": "pooler", "layers": (1,)}, "takes no layers"),
        ({"layers": ()}, "non-empty"),
        ({"layers": "1"}, "must be an int or a non-empty sequence"),
        ({"layers": (1.0,)}, "hidden-state indices are ints"),
        ({"normalize": "yes"}, "normalize='yes' must be True or False"),
        ({"truncation": 0}, "truncation=0 must be True or False"),
        ({"max_length": 1}, "max_length=1 must be an int >= 2"),
        ({"batch_size": 0}, "batch_size=0 must be a positive int"),
        ({"max_tokens": 100, "max_length": 128}, r"max_tokens=100 must be an int >= max_length \(128\)"),
    ],
)
def test_bad_fields_are_refused_once_by_name(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmbedRecipe(**fields)


def test_fields_are_normalized_hashable_and_round_trip() -> None:
    recipe = EmbedRecipe(pooling="mean", layers=[-2, -1], combine="mean", normalize=True)  # type: ignore[arg-type]
    assert recipe.layers == (-2, -1)
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
    recipe = EmbedRecipe(pooling="mean", layers=(-2, -1), normalize=True, batch_size=2)
    np.testing.assert_array_equal(
        enc.embed_recipe(texts, recipe),
        enc.embed(texts, pooling="mean", layers=[-2, -1], normalize=True, batch_size=2),
    )
    with pytest.raises(TypeError, match="must be an EmbedRecipe"):
        enc.embed_recipe(texts, {"pooling": "mean"})


def test_cli_ray_engine_receives_the_whole_recipe(
    export_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test that would have caught ``--no-truncation`` being dropped on the way to Ray: whatever the engine,
    the CLI builds one EmbedRecipe from its flags and hands it over whole."""
    from bert_onnx.integrations import ray as ray_integration

    seen: dict[str, Any] = {}

    def fake_embed_to_parquet(*args: Any, recipe: EmbedRecipe, **kwargs: Any) -> dict[str, Any]:
        seen["recipe"] = recipe
        return {"rows": 0, "parts": 0, "bad_rows": []}

    monkeypatch.setattr(ray_integration, "embed_to_parquet", fake_embed_to_parquet)
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "x"}\n')
    flags = ["--pooling", "mean", "--layers=-2:", "--normalize", "--max-length", "64", "--no-truncation"]
    argv = ["embed", str(export_dir("tiny")), "--engine", "ray", "-i", str(source), "-o", str(tmp_path / "out")]
    assert cli.main([*argv, *flags, "--batch-size", "8", "--quiet"]) == 0
    assert seen["recipe"] == EmbedRecipe(
        pooling="mean", layers=(1, 2), normalize=True, max_length=64, truncation=False, batch_size=8
    )


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
