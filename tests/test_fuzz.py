"""Property-based tests: whatever goes into ``encode``, ``embed`` and ``run``, the result is either correctly shaped
finite arrays or a ``TypeError``/``ValueError`` that names the problem; never a crash, a hang or a raw ONNX Runtime
error. The expected outcome of each generated case is decided here, independently of the code under test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bert_onnx.runtime import Encoder

pytestmark = pytest.mark.fast  # the edit-loop tier: tiny checkpoint, in process

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Every code point Python allows in a str, lone surrogates included, and a bias to the awkward ones: control and
# format characters, combining marks, CJK, emoji, private use, unassigned.
ANY_CHAR = st.characters(codec=None, categories=None)
PIECE = st.one_of(
    ANY_CHAR,
    st.characters(categories=["Cc", "Cf", "Mn", "Me", "Zs", "Zl", "Zp", "Co", "Cn", "So", "Lo"]),
    st.characters(categories=["Cs"]),  # lone surrogates: must be a named ValueError
    st.sampled_from(["\u0301", "\u200d", "\ufeff", "\x00", "\U0001f469\u200d\U0001f4bb", "\u4e00", "\r\n"]),
    st.sampled_from(["word", " ", "[SEP]", "[CLS]", "##ing", "don't", "3.14", "https://x.io/a?b=c"]),
)
TEXT = st.lists(PIECE, max_size=150).map("".join)


@pytest.fixture(scope="module")
def tiny(encoder: Callable[[str], Any]) -> Encoder:
    enc: Encoder = encoder("tiny")
    return enc


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def _finite(*arrays: np.ndarray) -> bool:
    return all(np.isfinite(a).all() for a in arrays)


@FUZZ
@given(texts=st.lists(TEXT, max_size=12), pooling=st.sampled_from(["cls", "mean", "pooler"]))
def test_embed_any_text(tiny: Encoder, texts: list[str], pooling: str) -> None:
    bad = [i for i, t in enumerate(texts) if _has_surrogate(t)]
    if bad:
        with pytest.raises(ValueError, match=rf"texts\[{bad[0]}\] holds a lone surrogate"):
            tiny.embed(texts, pooling=pooling)
        return
    vectors = tiny.embed(texts, pooling=pooling, batch_size=5)
    assert vectors.shape == (len(texts), tiny.hidden_size) and vectors.dtype == np.float32
    assert _finite(vectors)


@FUZZ
@given(texts=st.lists(TEXT, min_size=1, max_size=6), max_length=st.integers(2, 40))
def test_encode_any_text(tiny: Encoder, texts: list[str], max_length: int) -> None:
    assume(not any(_has_surrogate(t) for t in texts))
    out = tiny.encode(texts, max_length=max_length)
    batch, sequence = out.input_ids.shape
    assert batch == len(texts) and 2 <= sequence <= max_length
    assert out.last_hidden_state.shape == (batch, sequence, tiny.hidden_size)
    assert out.pooler_output.shape == (batch, tiny.hidden_size)
    assert out.hidden_states is not None and len(out.hidden_states) == tiny.num_layers + 1
    assert _finite(out.last_hidden_state, out.pooler_output, *out.hidden_states)
    # Every row starts with [CLS] and its real tokens end with [SEP].
    lengths = out.attention_mask.sum(axis=1)
    assert (out.input_ids[:, 0] == 101).all()
    assert (out.input_ids[np.arange(batch), lengths - 1] == 102).all()


INT_DTYPES = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64])
ANY_DTYPE = st.one_of(INT_DTYPES, st.sampled_from([np.float16, np.float32, np.float64, np.bool_, np.complex64]))
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)


def _array(dtype: Any, shape: Any, high: int) -> st.SearchStrategy[np.ndarray]:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        # Mostly in range, sometimes anywhere the dtype allows (negative, huge).
        elements = st.one_of(st.integers(0, min(high, int(info.max))), st.integers(int(info.min), int(info.max)))
        return hnp.arrays(dtype, shape, elements=elements)
    return hnp.arrays(dtype, shape)


def _ids_ok(array: np.ndarray, upper: int, allow_bool: bool = False) -> bool:
    if array.ndim != 2:
        return False
    if array.dtype == np.bool_:
        return allow_bool
    if not np.issubdtype(array.dtype, np.integer):
        return False
    return array.size == 0 or (int(array.min()) >= 0 and int(array.max()) < upper)


@st.composite
def model_inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    shape = draw(st.one_of(SHAPES, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=6)))
    ids = draw(_array(draw(ANY_DTYPE), shape, 1100))
    # The mask and segment ids usually share the ids' shape, and sometimes do not.
    mask_shape = draw(st.one_of(st.just(ids.shape), SHAPES))
    mask = draw(st.none() | _array(draw(st.one_of(INT_DTYPES, st.just(np.bool_))), mask_shape, 1))
    types = draw(st.none() | _array(draw(INT_DTYPES), draw(st.one_of(st.just(ids.shape), SHAPES)), 1))
    return ids, mask, types


@settings(FUZZ, max_examples=200)
@given(inputs=model_inputs())
def test_run_any_array(tiny: Encoder, inputs: tuple[np.ndarray, np.ndarray | None, np.ndarray | None]) -> None:
    ids, mask, types = inputs
    manifest = tiny.manifest
    valid = (
        _ids_ok(ids, manifest.vocab_size)
        and (mask is None or (_ids_ok(mask, 2, allow_bool=True) and mask.shape == ids.shape))
        and (types is None or (_ids_ok(types, manifest.type_vocab_size) and types.shape == ids.shape))
        and not (ids.shape[0] > 0 and ids.shape[1] == 0)
        and ids.shape[1] <= tiny.max_length
    )
    if not valid:
        with pytest.raises(ValueError, match=r"input_ids|attention_mask|token_type_ids"):
            tiny.run(ids, mask, types)
        return
    out = tiny.run(ids, mask, types)
    batch, sequence = ids.shape
    assert out.last_hidden_state.shape == (batch, sequence, tiny.hidden_size)
    assert out.pooler_output.shape == (batch, tiny.hidden_size)
    assert out.hidden_states is not None
    assert _finite(out.last_hidden_state, out.pooler_output, *out.hidden_states)


@pytest.mark.parametrize(
    ("texts", "error", "needle"),
    [
        ("a\ud800b", ValueError, r"texts\[0\] holds a lone surrogate U\+D800 at position 1"),
        (["ok", "x\udfff"], ValueError, r"texts\[1\] holds a lone surrogate U\+DFFF"),
        (["ok", b"bytes"], TypeError, r"texts\[1\] is bytes"),
        (b"bytes", TypeError, "not bytes"),
        (["ok", None], TypeError, r"texts\[1\] is NoneType"),
        (42, TypeError, "not int"),
        ({"a": 1}, TypeError, "not dict"),
    ],
)
def test_bad_texts_are_named(tiny: Encoder, texts: Any, error: type[Exception], needle: str) -> None:
    for call in (tiny.embed, tiny.encode):
        with pytest.raises(error, match=needle):
            call(texts)


def test_a_megabyte_string_and_thousands_of_texts(tiny: Encoder) -> None:
    huge = "word " * 200_000  # 1 MB, far past 512 tokens: truncated like transformers would
    out = tiny.encode([huge])
    assert out.input_ids.shape == (1, tiny.max_length) and _finite(out.last_hidden_state)
    with pytest.raises(ValueError, match=r"texts\[0\] is at least \d+ tokens long"):
        tiny.encode([huge], truncation=False)
    texts = [f"text number {i} " * (i % 7) for i in range(5000)]
    vectors = tiny.embed(texts, pooling="mean")
    assert vectors.shape == (5000, tiny.hidden_size) and _finite(vectors)
    # Order is restored: the same text gives the same vector wherever it sits.
    np.testing.assert_allclose(vectors[7], vectors[7 + 7 * 100], atol=1e-5)
