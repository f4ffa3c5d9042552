"""Every output of the runtime against PyTorch, computed in the test, on real (b) and full-size (c) weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from helpers import checkpoint_path, max_diffs, torch_reference

from bert_onnx import interface

TOLERANCE = interface.FP32_TOLERANCE
SENTENCES = [
    "I love Korea",
    "The quick brown fox jumps over the lazy dog.",
    "Hello!",
    "BERT produces contextual embeddings: the same word gets different vectors in different sentences.",
    "Seoul is the capital of South Korea, and Busan is its second largest city.",
    "Ünïcödé àccents, 中文字符 and emoji 🙂 all go through the same WordPiece vocabulary.",
    "",
    "   ",
    "A",
    "Feature-based use of BERT concatenates the last four hidden layers for named entity recognition.",
    "How old are you? I am six years old.",
]
LONG_TEXT = "Extracting embeddings from every encoder layer of BERT gives rich features. " * 80
CHECKPOINTS = ["minilm", pytest.param("base", marks=pytest.mark.slow)]


def assert_parity(diffs: dict[str, float], num_layers: int) -> None:
    assert list(diffs) == list(interface.output_names(num_layers))
    failing = {name: diff for name, diff in diffs.items() if not diff <= TOLERANCE}
    assert not failing, f"outputs over {TOLERANCE}: {failing}"


def check_encode(enc: Any, model: Any, texts: list[str], **kwargs: Any) -> Any:
    out = enc.encode(texts, **kwargs)
    reference = torch_reference(model, out.input_ids, out.attention_mask, out.token_type_ids)
    assert_parity(max_diffs(reference, out, out.attention_mask), enc.num_layers)
    return out


def test_tutorial_end_to_end(encoder: Callable[[str], Any], torch_model: Callable[[str], Any]) -> None:
    """The seed notebook on bert-base-uncased's architecture (c): tokens, ids, mask, shapes, values."""
    from transformers import BertTokenizer

    enc, model = encoder("base"), torch_model("base")
    reference_tokenizer = BertTokenizer.from_pretrained(checkpoint_path("base"))

    tokens = enc.tokenizer.tokenize("I love Korea")
    assert tokens == reference_tokenizer.tokenize("I love Korea") == ["i", "love", "korea"]
    tokens = ["[CLS]", *tokens, "[SEP]", "[PAD]", "[PAD]"]
    attention_mask = [1 if token != "[PAD]" else 0 for token in tokens]
    assert attention_mask == [1, 1, 1, 1, 1, 0, 0]
    token_ids = enc.tokenizer.convert_tokens_to_ids(tokens)
    assert token_ids == reference_tokenizer.convert_tokens_to_ids(tokens) == [101, 1045, 2293, 4420, 102, 0, 0]

    out = enc.run([token_ids], [attention_mask])  # ids and mask, no segment ids, as the notebook calls it
    assert out.last_hidden_state.shape == (1, 7, 768)
    assert out.pooler_output.shape == (1, 768)
    assert len(out.hidden_states) == 13
    assert all(h.shape == (1, 7, 768) for h in out.hidden_states)
    reference = torch_reference(model, [token_ids], [attention_mask])
    assert_parity(max_diffs(reference, out, np.array([attention_mask])), 12)

    encoded = enc.encode(["I love Korea"], padding="max_length", max_length=7)
    assert encoded.input_ids.tolist() == [token_ids]
    assert encoded.attention_mask.tolist() == [attention_mask]
    assert encoded.token_type_ids.tolist() == [[0] * 7]
    np.testing.assert_allclose(encoded.last_hidden_state, out.last_hidden_state, atol=1e-6)


@pytest.mark.parametrize("key", CHECKPOINTS)
@pytest.mark.parametrize("batch_size", [1, 33])
def test_encode_padded_batches(
    key: str, batch_size: int, encoder: Callable[[str], Any], torch_model: Callable[[str], Any]
) -> None:
    texts = [SENTENCES[i % len(SENTENCES)] + " extra words" * (i // len(SENTENCES)) for i in range(batch_size)]
    out = check_encode(encoder(key), torch_model(key), texts)
    assert out.input_ids.shape[0] == batch_size
    if batch_size > 1:
        assert (out.attention_mask == 0).any(), "the batch should contain padding"


@pytest.mark.parametrize("key", CHECKPOINTS)
def test_encode_512_token_row(key: str, encoder: Callable[[str], Any], torch_model: Callable[[str], Any]) -> None:
    out = check_encode(encoder(key), torch_model(key), [LONG_TEXT, "I love Korea"])
    assert out.input_ids.shape == (2, 512)
    assert out.attention_mask[0].sum() == 512, "the long text is truncated to exactly 512 tokens"
    assert out.input_ids[0, -1] == 102, "truncation keeps the final [SEP]"


@pytest.mark.parametrize("key", CHECKPOINTS)
def test_encode_max_length_padding(key: str, encoder: Callable[[str], Any], torch_model: Callable[[str], Any]) -> None:
    out = check_encode(encoder(key), torch_model(key), SENTENCES[:4], padding="max_length", max_length=64)
    assert out.input_ids.shape == (4, 64)


@pytest.mark.parametrize("key", CHECKPOINTS)
def test_run_with_token_type_ids_of_one(
    key: str, encoder: Callable[[str], Any], torch_model: Callable[[str], Any]
) -> None:
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(checkpoint_path(key))
    batch = tokenizer(
        [("How old are you?", "I am six years old."), ("Where do you live?", "In Seoul, near the river.")],
        padding="longest",
        return_tensors="np",
    )
    assert (batch["token_type_ids"] == 1).any()
    enc, model = encoder(key), torch_model(key)
    out = enc.run(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    reference = torch_reference(model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert_parity(max_diffs(reference, out, batch["attention_mask"]), enc.num_layers)


@pytest.mark.parametrize("key", CHECKPOINTS)
@pytest.mark.parametrize("batch_size", [1, 33])
def test_run_random_ids_full_length(
    key: str, batch_size: int, encoder: Callable[[str], Any], torch_model: Callable[[str], Any]
) -> None:
    """Pre-tokenized path with random ids, per-row lengths, random segments, and one unpadded 512-token row."""
    enc, model = encoder(key), torch_model(key)
    rng = np.random.default_rng(batch_size)
    sequence = 512 if batch_size == 1 else 96
    input_ids = rng.integers(0, enc.manifest.vocab_size, size=(batch_size, sequence))
    lengths = rng.integers(1, sequence + 1, size=batch_size)
    lengths[0] = sequence
    attention_mask = (np.arange(sequence)[None, :] < lengths[:, None]).astype(np.int64)
    token_type_ids = rng.integers(0, 2, size=(batch_size, sequence))
    out = enc.run(input_ids, attention_mask, token_type_ids)
    reference = torch_reference(model, input_ids, attention_mask, token_type_ids)
    assert_parity(max_diffs(reference, out, attention_mask), enc.num_layers)


def test_run_without_mask_or_segments_matches_transformers_defaults(
    encoder: Callable[[str], Any], torch_model: Callable[[str], Any]
) -> None:
    enc, model = encoder("minilm"), torch_model("minilm")
    ids = enc.encode(SENTENCES[:1]).input_ids
    out = enc.run(ids)
    reference = torch_reference(model, ids)
    assert_parity(max_diffs(reference, out, np.ones_like(ids)), enc.num_layers)


def test_encode_without_hidden_states(encoder: Callable[[str], Any]) -> None:
    enc = encoder("minilm")
    full = enc.encode(SENTENCES[:3])
    slim = enc.encode(SENTENCES[:3], output_hidden_states=False)
    assert slim.hidden_states is None
    np.testing.assert_array_equal(slim.last_hidden_state, full.last_hidden_state)
    np.testing.assert_array_equal(slim.pooler_output, full.pooler_output)
