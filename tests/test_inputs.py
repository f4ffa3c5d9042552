"""Bad input gets a TypeError/ValueError naming the problem before ONNX Runtime sees it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.fast  # the edit-loop tier: tiny checkpoint, in process

LONG_TEXT = "word " * 600


@pytest.fixture(scope="module")
def enc(encoder: Callable[[str], Any]) -> Any:
    return encoder("tiny")


@pytest.mark.parametrize("bad", [None, 7, b"bytes", 3.5, ["nested"]])
@pytest.mark.parametrize("method", ["encode", "embed"])
def test_non_string_item_is_a_type_error_naming_its_index(enc: Any, method: str, bad: Any) -> None:
    with pytest.raises(TypeError, match=rf"texts\[2\] is {type(bad).__name__}"):
        getattr(enc, method)(["fine", "also fine", bad])


@pytest.mark.parametrize("bad", [None, 7, b"bytes", {"a": 1}])
def test_texts_that_are_not_a_sequence(enc: Any, bad: Any) -> None:
    with pytest.raises(TypeError, match="texts must be a str or a sequence of str"):
        enc.encode(bad)


@pytest.mark.parametrize("method", ["encode", "embed"])
def test_a_0d_array_of_texts_is_a_type_error_naming_it(enc: Any, method: str) -> None:
    with pytest.raises(TypeError, match=r"texts is a 0-d NumPy array \(array\('abc'"):
        getattr(enc, method)(np.array("abc"))
    assert enc.embed(np.array(["abc", "de"])).shape == (2, enc.hidden_size)  # 1-d arrays are batches


@pytest.mark.parametrize("pooling", ["max", "mean", "cls", "lasttoken", "weightedmean", ["max", "mean"]])
def test_a_text_that_merges_into_a_left_out_prompt_is_refused_before_it_runs(enc: Any, pooling: Any) -> None:
    """The prompt "aac" and the text "hen" make one word piece, "aachen": with include_prompt=False nothing of the
    text is left to pool, which gave NaN (max) or zeros (mean). Refused naming the text, before any batch runs;
    pooler ignores the mask."""
    assert len(enc.tokenizer.encodings(["aachen"], 512)[0].ids) <= enc.prompt_length("aac", 512)  # the premise
    ran: list[int] = []
    with pytest.raises(ValueError, match=r"texts\[2\] leaves no token to pool: its tokens merged into the prompt's"):
        enc.embed(["a fine text", "another", "hen"], prompt="aac", include_prompt=False, pooling=pooling,
                  normalize=True, progress=ran.append)  # fmt: skip
    assert ran == []
    for kwargs in ({"include_prompt": True}, {"include_prompt": False, "prompt": "aac "}, {"pooling": "pooler"}):
        vectors = enc.embed(["hen"], **{"prompt": "aac", "include_prompt": False, "pooling": pooling, **kwargs})
        assert np.isfinite(vectors).all() and np.abs(vectors).max() > 0, kwargs


def test_long_text_is_truncated_by_default(enc: Any) -> None:
    out = enc.encode([LONG_TEXT, "short"], max_length=16)
    assert out.input_ids.shape == (2, 16)
    assert out.input_ids[0, 0] == 101 and out.input_ids[0, -1] == 102  # [CLS] ... [SEP]
    assert enc.embed([LONG_TEXT]).shape == (1, enc.hidden_size)
    assert enc.encode([LONG_TEXT]).input_ids.shape == (1, 512)


@pytest.mark.parametrize("method", ["encode", "embed"])
def test_long_text_raises_when_truncation_is_off(enc: Any, method: str) -> None:
    with pytest.raises(ValueError, match=r"texts\[1\] is (at least )?\d+ tokens long, over max_length=16"):
        getattr(enc, method)(["short", LONG_TEXT], max_length=16, truncation=False)


@pytest.mark.parametrize("max_length", [0, 1, 513, "7", 7.0, True])
def test_bad_max_length(enc: Any, max_length: Any) -> None:
    with pytest.raises(ValueError, match="max_length"):
        enc.encode(["x"], max_length=max_length)


def test_bad_padding(enc: Any) -> None:
    with pytest.raises(ValueError, match="padding='left' is not one of longest, max_length"):
        enc.encode(["x"], padding="left")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pooling": "avg"}, "pooling='avg' is not one of cls, pooler, mean"),
        ({"combine": "sum", "layers": [1]}, "combine='sum' is not one of concat, mean"),
        ({"pooling": "pooler", "layers": [1]}, "takes no layers"),
        ({"layers": [3]}, "layer 3 is out of range: this model has hidden states 0..2"),
        ({"layers": [-4]}, "layer -4 is out of range"),
        ({"layers": []}, "non-empty"),
        ({"layers": "1"}, "must be an int or a non-empty sequence"),
        ({"layers": [1.0]}, "hidden-state indices are ints"),
        ({"batch_size": 0}, "batch_size=0 must be a positive int"),
        ({"batch_size": 2.5}, "batch_size=2.5 must be a positive int"),
    ],
)
def test_bad_embed_options(enc: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        enc.embed(["x"], **kwargs)


def ids(*shape: int) -> np.ndarray:
    return np.full(shape, 1000, dtype=np.int64)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_ids": [101, 102]}, r"input_ids must be 2-d \(batch, sequence\); got shape \(2,\)"),
        ({"input_ids": ids(1, 2, 3)}, "input_ids must be 2-d"),
        ({"input_ids": [[101, 102], [101]]}, "rectangular"),
        ({"input_ids": ids(1, 3).astype(np.float32)}, "input_ids must hold integers; got dtype float32"),
        ({"input_ids": [["a", "b"]]}, "input_ids must hold integers"),
        ({"input_ids": [[101, 30522]]}, r"input_ids\[0, 1\] = 30522 is outside \[0, 30522\)"),
        ({"input_ids": [[101, -1]]}, r"input_ids\[0, 1\] = -1 is outside"),
        ({"input_ids": ids(2, 3), "attention_mask": np.ones((2, 4), np.int64)}, "attention_mask has shape"),
        ({"input_ids": ids(2, 3), "token_type_ids": np.zeros((3, 3), np.int64)}, "token_type_ids has shape"),
        (
            {"input_ids": ids(1, 3), "attention_mask": [[1, 2, 1]]},
            r"attention_mask\[0, 1\] = 2 is outside \[0, 2\)",
        ),
        ({"input_ids": ids(1, 3), "token_type_ids": [[0, 2, 0]]}, r"token_type_ids\[0, 1\] = 2 is outside"),
        ({"input_ids": ids(1, 3), "attention_mask": [[1.0, 1.0, 0.5]]}, "attention_mask must hold integers"),
        ({"input_ids": ids(1, 513)}, "sequence length 513, over the model's maximum of 512"),
        ({"input_ids": ids(2, 0)}, "sequence length 0"),
    ],
)
def test_bad_ids_are_value_errors(enc: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        enc.run(**kwargs)


def test_valid_id_variants_are_accepted(enc: Any) -> None:
    base = enc.run([[101, 1045, 102]], [[1, 1, 1]])
    as_int32 = enc.run(np.array([[101, 1045, 102]], dtype=np.int32), np.array([[True, True, True]]))
    np.testing.assert_array_equal(base.last_hidden_state, as_int32.last_hidden_state)
    # A transposed (non-contiguous) view is copied to a contiguous int64 array, not misread.
    view = np.array([[101, 101], [1045, 1045], [102, 102]], dtype=np.int64).T
    np.testing.assert_allclose(enc.run(view).last_hidden_state[0], base.last_hidden_state[0], atol=1e-6)


@pytest.mark.parametrize("device", ["gpu", "CPU", ""])
def test_unknown_device(export_dir: Callable[[str], Any], device: str) -> None:
    from bert_onnx.runtime import Encoder

    with pytest.raises(ValueError, match=f"device='{device}' is not one of cpu, cuda"):
        Encoder(export_dir("tiny"), device=device)


TOO_MANY = "4 per usable CPU, plus one"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2", TOO_MANY])
def test_bad_threads(export_dir: Callable[[str], Any], threads: Any, backend: str) -> None:
    """One rule for every backend, checked before one is chosen or loads (OpenVINO took 0, 2.5, "2" and 10**6)."""
    from bert_onnx import machine
    from bert_onnx.runtime import Encoder

    cap = machine.THREADS_PER_CPU * machine.usable_cpus()
    threads = cap + 1 if threads == TOO_MANY else threads
    with pytest.raises(ValueError, match=rf"threads={re.escape(repr(threads))} must be an int in \[1, {cap}\]"):
        Encoder(export_dir("tiny"), threads=threads, backend=backend)


def test_threads_takes_numpy_ints_and_stores_an_int(export_dir: Callable[[str], Any]) -> None:
    from bert_onnx.runtime import Encoder

    encoder = Encoder(export_dir("tiny"), threads=np.int64(1))
    assert encoder.threads == 1 and type(encoder.threads) is int


def test_threads_setting_gives_same_numbers(export_dir: Callable[[str], Any], enc: Any) -> None:
    from bert_onnx.runtime import Encoder

    single = Encoder(export_dir("tiny"), threads=1)
    np.testing.assert_allclose(single.embed(["I love Korea"]), enc.embed(["I love Korea"]), atol=1e-6)
