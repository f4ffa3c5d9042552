"""Offline checkpoints of every model family bert-onnx exports besides BERT: RANDOM weights, real tokenizers.

For each family, a small model (2 layers, hidden 32 or 64) built from its transformers config with weights drawn
by its own initialiser under a fixed seed, plus a tokenizer of the family's kind (WordPiece, byte-level BPE or
SentencePiece-style Unigram) trained with `tokenizers` on real English text (Python's reference documentation,
``pydoc_data.topics``) and saved under the family's tokenizer class, so ``AutoTokenizer`` loads it back as that
class. Also:

  roberta-base-arch-random-weights/  RoBERTa-base's exact shape (12 layers, hidden 768, vocab 50265), RANDOM weights
  tiny-random-bert-generic-tokenizer/ a BERT whose tokenizer_config.json names the generic PreTrainedTokenizerFast,
                                      which emits no token_type_ids

None of these models is pretrained: use them for shape, parity, tokenizer and speed checks only.

Usage: python scripts/checkpoints_families.py [CACHE_DIR]   (default .cache/checkpoints); called by
scripts/prepare_checkpoints.py. Existing folders are left alone.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEED = 0
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
RANDOM_LABEL = (
    "RANDOM WEIGHTS. A {model_type} model ({shape}) built from transformers' {config_class} with weights drawn by "
    "its initialiser under torch.manual_seed({seed}); the tokenizer is a {kind} tokenizer trained with `tokenizers` "
    "on Python's reference documentation (pydoc_data.topics), saved as {tokenizer_class}. It is NOT a pretrained "
    "model; use it for shape, parity, tokenizer and speed checks only.\n"
)


@dataclass(frozen=True)
class Special:
    """A family's special tokens, in vocabulary order (ids 0, 1, ...), and which role each plays."""

    tokens: tuple[str, ...]
    roles: dict[str, str]  # transformers name (bos_token, cls_token, ...) -> token
    mask: str  # appended after the trained vocabulary, as the family's real checkpoints have it


@dataclass(frozen=True)
class Spec:
    folder: str
    model_type: str
    kind: str  # "wordpiece" | "bpe" | "unigram"
    tokenizer_class: str
    special: Special
    config: dict[str, Any]
    vocab_size: int = 4000
    lowercase: bool = False
    pair: str = "bert"  # "bert": [CLS] A [SEP] B [SEP]; "roberta": <s> A </s></s> B </s>
    tokenizer_config: dict[str, Any] = field(default_factory=dict)


_ROBERTA_SPECIAL = Special(
    ("<s>", "<pad>", "</s>", "<unk>"),
    {
        "bos_token": "<s>",
        "cls_token": "<s>",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
    },
    "<mask>",
)
_BERT_SPECIAL = Special(
    ("[PAD]", "[UNK]", "[CLS]", "[SEP]"),
    {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"},
    "[MASK]",
)
_ROBERTA_IDS = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}

# DeBERTa-v2 and v3 share their special tokens and their relative-attention settings.
_DEBERTA_SPECIAL = Special(
    ("[PAD]", "[CLS]", "[SEP]", "[UNK]"),
    {
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "bos_token": "[CLS]",
        "eos_token": "[SEP]",
        "unk_token": "[UNK]",
        "mask_token": "[MASK]",
    },
    "[MASK]",
)
_DEBERTA = {
    **TINY,
    "pad_token_id": 0,
    "max_position_embeddings": 512,
    "relative_attention": True,
    "position_buckets": 256,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": ["p2c", "c2p"],
    "position_biased_input": False,
    "max_relative_positions": -1,
}

SPECS: tuple[Spec, ...] = (
    Spec(
        "tiny-random-roberta",
        "roberta",
        "bpe",
        "RobertaTokenizer",
        _ROBERTA_SPECIAL,
        {**TINY, **_ROBERTA_IDS, "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5},
        pair="roberta",
    ),
    Spec(
        "tiny-random-xlm-roberta",
        "xlm-roberta",
        "unigram",
        "XLMRobertaTokenizer",
        _ROBERTA_SPECIAL,
        {**TINY, **_ROBERTA_IDS, "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5},
        pair="roberta",
    ),
    Spec(
        "tiny-random-distilbert",
        "distilbert",
        "wordpiece",
        "DistilBertTokenizer",
        _BERT_SPECIAL,
        {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 37, "pad_token_id": 0},
        lowercase=True,
        tokenizer_config={"do_lower_case": True},
    ),
    Spec(
        "tiny-random-albert",
        "albert",
        "unigram",
        "AlbertTokenizer",
        Special(
            ("<pad>", "<unk>", "[CLS]", "[SEP]"),
            {
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "bos_token": "[CLS]",
                "eos_token": "[SEP]",
                "mask_token": "[MASK]",
            },
            "[MASK]",
        ),
        {**TINY, "embedding_size": 16, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3},
        lowercase=True,
        tokenizer_config={"do_lower_case": True, "keep_accents": False},
    ),
    Spec(
        "tiny-random-electra",
        "electra",
        "wordpiece",
        "ElectraTokenizer",
        _BERT_SPECIAL,
        {**TINY, "embedding_size": 16, "pad_token_id": 0},
        lowercase=True,
        tokenizer_config={"do_lower_case": True},
    ),
    Spec(
        "tiny-random-mpnet",
        "mpnet",
        "wordpiece",
        "MPNetTokenizer",
        Special(
            ("<s>", "<pad>", "</s>", "[UNK]"),
            {
                "bos_token": "<s>",
                "cls_token": "<s>",
                "pad_token": "<pad>",
                "eos_token": "</s>",
                "sep_token": "</s>",
                "unk_token": "[UNK]",
                "mask_token": "<mask>",
            },
            "<mask>",
        ),
        {**TINY, **_ROBERTA_IDS, "max_position_embeddings": 514, "relative_attention_num_buckets": 32},
        lowercase=True,
        pair="roberta",
        tokenizer_config={"do_lower_case": True},
    ),
    # DeBERTa-v3's shape: relative attention over log buckets, no absolute positions, no segment embeddings.
    Spec(
        "tiny-random-deberta-v3",
        "deberta-v2",
        "unigram",
        "DebertaV2Tokenizer",
        _DEBERTA_SPECIAL,
        {
            **_DEBERTA,
            "type_vocab_size": 0,
            "layer_norm_eps": 1e-7,
        },
        tokenizer_config={"do_lower_case": False, "split_by_punct": False},
    ),
    # DeBERTa-v2's (xlarge) shape adds a convolution beside the first layer's attention.
    Spec(
        "tiny-random-deberta-v2",
        "deberta-v2",
        "unigram",
        "DebertaV2Tokenizer",
        _DEBERTA_SPECIAL,
        {
            **_DEBERTA,
            "conv_kernel_size": 3,
            "conv_act": "gelu",
            "attention_head_size": 16,
            "type_vocab_size": 0,
            "layer_norm_eps": 1e-7,
        },
        tokenizer_config={"do_lower_case": False, "split_by_punct": False},
    ),
    # Layer 0 attends globally, layer 1 within a 64-token window: texts over 64 tokens see both.
    Spec(
        "tiny-random-modernbert",
        "modernbert",
        "bpe",
        "PreTrainedTokenizerFast",
        _BERT_SPECIAL,
        {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 80,
            "max_position_embeddings": 512,
            "local_attention": 64,
            "global_attn_every_n_layers": 2,
            "pad_token_id": 0,
            "cls_token_id": 2,
            "sep_token_id": 3,
            "bos_token_id": 2,
            "eos_token_id": 3,
        },
    ),
    Spec(
        "roberta-base-arch-random-weights",
        "roberta",
        "bpe",
        "RobertaTokenizer",
        _ROBERTA_SPECIAL,
        {
            **_ROBERTA_IDS,
            "vocab_size": 50265,
            "max_position_embeddings": 514,
            "type_vocab_size": 1,
            "layer_norm_eps": 1e-5,
        },
        vocab_size=50265,
        pair="roberta",
    ),
)


def corpus() -> list[str]:
    """Non-empty lines of Python's reference documentation, in a fixed order."""
    from pydoc_data.topics import topics

    return [line for key in sorted(topics) for line in topics[key].splitlines() if line.strip()]


def _post_processor(spec: Spec, ids: Callable[[str], int]) -> Any:
    from tokenizers import processors

    cls, sep = spec.special.roles["cls_token"], spec.special.roles["sep_token"]
    if spec.pair == "roberta":
        pair = f"{cls}:0 $A:0 {sep}:0 {sep}:0 $B:0 {sep}:0"
    else:
        pair = f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1"
    return processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=pair, special_tokens=[(cls, ids(cls)), (sep, ids(sep))]
    )


def train_tokenizer(spec: Spec, texts: list[str]) -> Any:
    """A `tokenizers.Tokenizer` of ``spec.kind``, special tokens first (their ids fixed), the mask token last."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = list(spec.special.tokens)
    unk = spec.special.roles["unk_token"]
    tokenizer: Any
    if spec.kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=unk))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=spec.lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer: Any = trainers.WordPieceTrainer(vocab_size=spec.vocab_size, special_tokens=specials)
    elif spec.kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=spec.vocab_size - 1,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif spec.kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        steps = [normalizers.Replace(Regex(r"\s{2,}|[\n\r\t]"), " "), normalizers.NFKC()]
        if spec.lowercase:
            steps = [normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase(), *steps]
        tokenizer.normalizer = normalizers.Sequence(steps)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
        )
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(
            vocab_size=spec.vocab_size - 1, special_tokens=specials, unk_token=unk, shrinking_factor=0.75
        )
    else:
        raise ValueError(f"unknown tokenizer kind {spec.kind!r}")
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for index, token in enumerate(specials):
        if tokenizer.token_to_id(token) != index:
            raise RuntimeError(f"{spec.folder}: special token {token} got id {tokenizer.token_to_id(token)}")
    tokenizer.add_special_tokens([spec.special.mask])
    tokenizer.post_processor = _post_processor(spec, tokenizer.token_to_id)
    return tokenizer


def save_tokenizer(spec: Spec, tokenizer: Any, staged: Path) -> int:
    """Save under ``spec.tokenizer_class``, check ``AutoTokenizer`` loads that class back; return its size."""
    import transformers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=512, **spec.special.roles)
    wrapped.save_pretrained(staged)
    config_path = staged / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update({"tokenizer_class": spec.tokenizer_class, **spec.tokenizer_config})
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    loaded = AutoTokenizer.from_pretrained(staged)
    if not isinstance(loaded, getattr(transformers, spec.tokenizer_class)):  # ElectraTokenizer is BertTokenizer
        raise RuntimeError(f"{spec.folder}: AutoTokenizer loaded {type(loaded).__name__}, not {spec.tokenizer_class}")
    return len(loaded)


def build(spec: Spec, target: Path, texts: list[str]) -> None:
    import torch
    from transformers import AutoConfig, AutoModel

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staged = Path(tmp) / "model"
        staged.mkdir()
        size = save_tokenizer(spec, train_tokenizer(spec, texts), staged)
        overrides = {"vocab_size": size, **spec.config}
        config = AutoConfig.for_model(spec.model_type, **overrides)
        torch.manual_seed(SEED)
        model = AutoModel.from_config(config).eval()
        model.save_pretrained(staged, safe_serialization=True)
        shape = f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}"
        (staged / "RANDOM_WEIGHTS.txt").write_text(
            RANDOM_LABEL.format(
                model_type=spec.model_type,
                shape=shape,
                config_class=type(config).__name__,
                seed=SEED,
                kind=spec.kind,
                tokenizer_class=spec.tokenizer_class,
            )
        )
        shutil.move(str(staged), target)


def generic_tokenizer_bert(target: Path, vocab: Path) -> None:
    """A tiny BERT whose tokenizer_config.json names ``PreTrainedTokenizerFast`` over a WordPiece tokenizer.json,
    as some hub checkpoints ship it: transformers' generic class emits no token_type_ids."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staged = Path(tmp) / "model"
        staged.mkdir()
        tokenizer = BertWordPieceTokenizer(str(vocab), lowercase=True)
        tokenizer.save(str(staged / "tokenizer.json"))
        roles = {
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
        }
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, **roles}
        (staged / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        torch.manual_seed(SEED)
        BertModel(BertConfig(**TINY)).eval().save_pretrained(staged, safe_serialization=True)
        (staged / "RANDOM_WEIGHTS.txt").write_text(
            f"RANDOM WEIGHTS. A 2-layer BERT (hidden 32) drawn by BertModel's initialiser under "
            f"torch.manual_seed({SEED}), with bert-base-uncased's vocabulary in a tokenizer.json whose "
            "tokenizer_config.json names the generic PreTrainedTokenizerFast. Not a pretrained model.\n"
        )
        shutil.move(str(staged), target)


def main(cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    texts: list[str] | None = None
    for spec in SPECS:
        target = cache / spec.folder
        if target.exists():
            continue
        print(f"creating {target} ({spec.model_type}, RANDOM weights, {spec.kind} tokenizer)", flush=True)
        texts = texts or corpus()
        build(spec, target, texts)
    generic = cache / "tiny-random-bert-generic-tokenizer"
    vocab = cache / "all-MiniLM-L6-v2" / "vocab.txt"
    if not generic.exists():
        print(f"creating {generic} (BERT, RANDOM weights, generic fast tokenizer)", flush=True)
        generic_tokenizer_bert(generic, vocab)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/checkpoints"))
