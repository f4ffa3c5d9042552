"""``ServeSettings`` and ``BatchSettings``: every value checked once, where it enters, the same way for the server
and the batcher (a ``bool`` is never a count or a fraction), with the command line's defaults read from them."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from bert_onnx.cli import build_parser
from bert_onnx.errors import InvalidTypeError, InvalidValueError
from bert_onnx.serve.batcher import Batcher
from bert_onnx.serve.settings import BatchSettings, ServeSettings

pytestmark = pytest.mark.fast

BAD_BATCHING: list[tuple[str, Any, str]] = [
    ("max_batch_size", True, "max_batch_size=True must be a positive int"),
    ("max_batch_size", 0, "max_batch_size=0 must be a positive int"),
    ("max_batch_size", 1.5, "max_batch_size=1.5 must be a positive int"),
    ("max_batch_tokens", "8192", "max_batch_tokens='8192' must be a positive int"),
    ("max_queue", -1, "max_queue=-1 must be a positive int"),
    ("max_wait_ms", True, "max_wait_ms=True must be a number in [0, 1000] (milliseconds)"),
    ("max_wait_ms", 1001, "max_wait_ms=1001 must be a number in [0, 1000]"),
    ("max_wait_ms", -0.5, "max_wait_ms=-0.5 must be a number in [0, 1000]"),
    ("max_wait_ms", math.nan, "max_wait_ms=nan must be a number in [0, 1000]"),
    ("max_padding", True, "max_padding=True must be a number >= 0"),
    ("max_padding", -0.1, "max_padding=-0.1 must be a number >= 0"),
    ("max_padding", math.inf, "max_padding=inf must be a number >= 0"),
    ("max_padding", "0.25", "max_padding='0.25' must be a number >= 0"),
]
BAD_SERVING: list[tuple[str, Any, str]] = [
    ("port", 70000, "port=70000 must be an int in [0, 65535] (0: any free port)"),
    ("port", True, "port=True must be an int in [0, 65535]"),
    ("host", "", "host='' must be a host name or address"),
    ("accept_token_ids", "yes", "accept_token_ids='yes' must be True or False"),
    ("accept_token_ids", 1, "accept_token_ids=1 must be True or False"),
    ("api_key", " ", "api_key must be a non-empty string or None"),
    ("max_inputs", 0, "max_inputs=0 must be a positive int"),
    ("max_encode_bytes", False, "max_encode_bytes=False must be a positive int"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_BATCHING, ids=[f"{n}={v!r}" for n, v, _ in BAD_BATCHING])
def test_batching_values_are_refused_alike_by_both(name: str, value: Any, message: str) -> None:
    for settings in (BatchSettings, ServeSettings):
        with pytest.raises(InvalidValueError) as refused:
            settings(**{name: value})
        assert message in str(refused.value)


@pytest.mark.parametrize(("name", "value", "message"), BAD_SERVING, ids=[f"{n}={v!r}" for n, v, _ in BAD_SERVING])
def test_serving_values_are_refused(name: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidValueError) as refused:
        ServeSettings(**{name: value})
    assert message in str(refused.value)


def test_values_are_normalized_and_none_turns_the_padding_bound_off() -> None:
    settings = ServeSettings(max_batch_size=np.int64(8), max_wait_ms=np.float32(0.5), max_padding=None, port=0)
    assert type(settings.max_batch_size) is int and settings.max_batch_size == 8
    assert type(settings.max_wait_ms) is float and settings.max_wait_ms == 0.5
    assert settings.max_padding is None and settings.accept_token_ids is False
    assert "api_key" not in repr(ServeSettings(api_key="secret")) and "secret" not in repr(ServeSettings())


def test_the_batcher_takes_checked_settings_only() -> None:
    with pytest.raises(InvalidTypeError, match="must be a BatchSettings"):
        Batcher(object(), {"max_batch_size": 3}, start=False)  # type: ignore[arg-type]


def test_the_command_line_defaults_are_the_settings_defaults() -> None:
    args = build_parser().parse_args(["serve", "DIR"])
    defaults = ServeSettings()
    for option, field in (
        ("host", "host"),
        ("port", "port"),
        ("batch_size", "max_batch_size"),
        ("max_batch_tokens", "max_batch_tokens"),
        ("max_wait_ms", "max_wait_ms"),
        ("max_padding", "max_padding"),
        ("max_queue", "max_queue"),
        ("accept_token_ids", "accept_token_ids"),
    ):
        assert getattr(args, option) == getattr(defaults, field), option
    assert {f.name for f in dataclasses.fields(BatchSettings)} <= {f.name for f in dataclasses.fields(ServeSettings)}
