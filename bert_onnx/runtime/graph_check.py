"""Refuse ONNX graphs that need operators from a domain we do not ship, before ONNX Runtime sees them.

A model folder is untrusted input. ONNX Runtime runs only operators it has kernels for, but a graph that declares a
custom-op domain is asking for a native library to be registered for it; we never register one, and we say so by
name instead of letting ONNX Runtime fail deep inside session creation. The runtime does not depend on the ``onnx``
package (and parsing a whole 400 MB ``ModelProto`` to read a dozen bytes would be slow), so this reads the few
top-level fields it needs straight from the protobuf wire format, skipping the graph without reading it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from bert_onnx.errors import InvalidValueError
from bert_onnx.manifest import ModelFolderError

# "" and "ai.onnx" are the standard operator set; "com.microsoft" holds ONNX Runtime's own contrib ops (Attention,
# SkipLayerNormalization, DynamicQuantizeMatMul, ...) that the opt, int8 and fp16 variants use.
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})

_MODEL_OPSET_IMPORT = 8  # ModelProto.opset_import: repeated OperatorSetIdProto
_MODEL_FUNCTIONS = 25  # ModelProto.functions: repeated FunctionProto (each names its own domain)
_OPSET_DOMAIN = 1  # OperatorSetIdProto.domain: string
_FUNCTION_DOMAIN = 10  # FunctionProto.domain: string


def _varint(read: BinaryIO) -> int | None:
    shift, value = 0, 0
    while True:
        byte = read.read(1)
        if not byte:
            return None if shift == 0 else _truncated()
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise InvalidValueError("malformed varint")


def _truncated() -> int:
    raise InvalidValueError("the file ends inside a field")


def _fields(stream: BinaryIO, keep: frozenset[int]) -> list[tuple[int, bytes]]:
    """(field number, payload) of the length-delimited fields numbered in ``keep``; every other field is skipped."""
    found: list[tuple[int, bytes]] = []
    while (key := _varint(stream)) is not None:
        number, wire = key >> 3, key & 7
        if wire == 0:
            _varint(stream)
        elif wire in (1, 5):
            stream.seek(8 if wire == 1 else 4, 1)
        elif wire == 2:
            size = _varint(stream)
            if size is None:
                _truncated()
            elif number in keep:
                payload = stream.read(size)
                if len(payload) != size:
                    _truncated()
                found.append((number, payload))
            else:
                stream.seek(size, 1)
        else:
            raise InvalidValueError(f"wire type {wire} in field {number}")
    return found


def _string_field(message: bytes, number: int) -> str:
    values = [payload for _, payload in _fields(io.BytesIO(message), frozenset({number}))]
    return values[-1].decode("utf-8", errors="replace") if values else ""


def operator_domains(path: str | Path) -> set[str]:
    """The operator domains a model file declares (its opset imports and its local functions' domains)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            fields = _fields(handle, frozenset({_MODEL_OPSET_IMPORT, _MODEL_FUNCTIONS}))
            if handle.tell() > size:
                _truncated()
    except ValueError as exc:
        raise ModelFolderError(f"{path}: not a valid ONNX model file ({exc})") from exc
    domains = set()
    for number, payload in fields:
        field = _OPSET_DOMAIN if number == _MODEL_OPSET_IMPORT else _FUNCTION_DOMAIN
        domains.add(_string_field(payload, field))
    return domains


def check_domains(path: str | Path) -> None:
    """Raise ``ModelFolderError`` naming the file and domain if the graph needs operators we do not ship."""
    unknown = sorted(operator_domains(path) - KNOWN_DOMAINS)
    if unknown:
        raise ModelFolderError(
            f"{path}: the graph uses operators from custom domain(s) {', '.join(map(repr, unknown))}; bert-onnx "
            f"runs only {', '.join(repr(d) for d in sorted(KNOWN_DOMAINS) if d)} and the standard ONNX operators, "
            "and never loads custom-op libraries from a model folder"
        )
