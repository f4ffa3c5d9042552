"""One exception root: everything bert-onnx raises on purpose is a BertOnnxError; a bug keeps its traceback."""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil

import pytest

import bert_onnx
from bert_onnx import cli
from bert_onnx.errors import BertOnnxError, InvalidValueError

pytestmark = pytest.mark.fast


def _package_modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(bert_onnx.__path__, "bert_onnx.") if not m.name.endswith("__main__")]


def test_every_exception_the_package_defines_derives_from_the_root() -> None:
    defined = []
    for name in _package_modules():
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == name:
                defined.append(value)
    assert len(defined) >= 10  # the walk found the package's exceptions
    assert [cls.__qualname__ for cls in defined if not issubclass(cls, BertOnnxError)] == []


def test_a_refusal_prints_one_line_and_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def refuse(args: argparse.Namespace) -> int:
        raise InvalidValueError("pooling='avg' is not one of cls, pooler, mean")

    monkeypatch.setattr(cli, "build_parser", lambda: _parser(refuse))
    monkeypatch.setattr(cli, "_show_library_log", lambda: None)  # no handler left on the package logger
    assert cli.main([]) == 1
    assert capsys.readouterr().err.strip() == "bert-onnx: error: pooling='avg' is not one of cls, pooler, mean"


def test_a_bug_keeps_its_type_and_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(args: argparse.Namespace) -> int:
        return len(None)  # type: ignore[arg-type]  # a TypeError that bert-onnx did not raise on purpose

    monkeypatch.setattr(cli, "build_parser", lambda: _parser(bug))
    monkeypatch.setattr(cli, "_show_library_log", lambda: None)
    with pytest.raises(TypeError, match="has no len"):
        cli.main([])


def _parser(func: object) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.set_defaults(func=func)
    return parser
