"""The package's one exception root.

Every exception bert-onnx raises on purpose derives from :class:`BertOnnxError`, so a caller (the command line
among them) can catch "bert-onnx refused this" apart from a bug, which keeps its own type and traceback. Each
subclass also derives from the builtin a caller would expect (``ValueError`` for a bad value, ``TypeError`` for
a value of the wrong type, ``RuntimeError`` for a failed run), so ``except ValueError`` keeps working.

This module imports nothing: the runtime and export sides both read it.
"""

from __future__ import annotations


class BertOnnxError(Exception):
    """Root of every exception bert-onnx raises on purpose."""


class InvalidValueError(BertOnnxError, ValueError):
    """An argument, option, request field or file holds a value bert-onnx does not accept; the message names it."""


class InvalidTypeError(BertOnnxError, TypeError):
    """An argument has the wrong type; the message names it and the types accepted."""


class IncompleteRunError(BertOnnxError, RuntimeError):
    """A long job found its own results inconsistent (parts missing, a file changed while read)."""
