"""OpenVINO as a second backend: ``model.onnx`` in fp32, or bf16 on CPUs with bf16 units; or the folder's own int8
graph (an OpenVINO IR quantized by NNCF at export) with fp32 or bf16 for the rest.

ONNX Runtime's CPU provider has no bf16 GEMM on x86; OpenVINO compiles the ONNX graph directly and, with
``INFERENCE_PRECISION_HINT=bf16``, runs its matrix products on AVX512_BF16 or AMX units while keeping inputs and
outputs fp32. Asking for bf16 on a CPU whose OpenVINO capabilities lack ``BF16`` is refused with a clear error:
OpenVINO would otherwise quietly run fp32 (or emulate bf16 slowly), and a user who asked for bf16 should know.

Outputs: a call that needs no hidden state (``embed`` with mean, CLS or pooler pooling needs only
``last_hidden_state`` or ``pooler_output``) runs a second compilation of the graph with just those two outputs
(:data:`HEAD_OUTPUTS`), made on first use. OpenVINO must otherwise convert and write every hidden state out of its
fused bf16 kernels; measured on an AMX Xeon, bf16, ``last_hidden_state`` alone ran 1.14-1.31x faster than with every
output (MiniLM, 32 texts of 64-200 tokens) and 1.12x (bert-base shape, 8 x 128), with bit-identical values
(docs/speed.md). A compiled graph is large (about 0.64 GB for bert-base in bf16, measured), so there are never more
than these two, and the whole graph compiled at load is released when the head graph is made and the whole one has
not run yet: a process that only embeds holds one compiled graph, as before; one that also asks for hidden states
holds both.

Threading: each compiled model is shared; each thread gets its own infer request (a request is not thread-safe),
so one ``Encoder`` can be used from many threads, as with ONNX Runtime.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_onnx import machine
from bert_onnx.errors import BertOnnxError, InvalidValueError
from bert_onnx.manifest import ModelFolderError

# A precision is what OpenVINO computes in: fp32 or bf16 over model.onnx, or an int8 graph of the folder's own
# (quantized at export) with fp32 or bf16 for the operations left in float.
PRECISIONS = ("fp32", "bf16", "int8", "int8-bf16")
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32", "int8-bf16": "bf16"}
INSTALL_HINT = "pip install 'bert-onnx[openvino]'"
HEAD_OUTPUTS = frozenset({"last_hidden_state", "pooler_output"})  # the outputs of the second compilation


class BackendError(BertOnnxError, RuntimeError):
    """The OpenVINO backend cannot run here: not installed, or the CPU lacks what the precision needs."""


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendError(f"backend='openvino' needs the openvino package: {INSTALL_HINT} ({exc})") from exc
    return openvino


@functools.cache
def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's own view of what the CPU can do (e.g. FP32, BF16, INT8, FP16); the CPU does not change."""
    return tuple(_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InvalidValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if _HINTS[precision] == "bf16":
        capabilities = cpu_capabilities()
        if "BF16" not in capabilities:
            raise BackendError(
                f"precision={precision!r} needs a CPU with bf16 units (AVX512_BF16 or AMX); OpenVINO reports this "
                f"CPU's capabilities as {', '.join(capabilities)}. Use precision='fp32' here."
            )


def _public_name(port: Any) -> str:
    """An output's name as the export gave it (``hidden_states.0``), not another name of the same tensor."""
    names = sorted(port.get_names())
    ours = [n for n in names if n in HEAD_OUTPUTS or n.startswith("hidden_states.")]
    return ours[0] if ours else port.get_any_name()


class OpenVINOSession:
    """The part of ``onnxruntime.InferenceSession`` that ``Encoder`` uses, run by OpenVINO on the CPU."""

    def __init__(
        self, model_path: str | Path, precision: str, threads: int | None = None, cache_dir: Path | None = None
    ) -> None:
        check_precision(precision)
        threads = machine.check_threads(threads)
        ov = _openvino()
        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
        self._core, self._config, self._path = core, config, Path(model_path)
        self._compiled = self._compile(None)
        # Second guard: on a CPU without bf16 units OpenVINO accepts the bf16 hint and compiles f32 (seen here).
        effective = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        effective = effective.to_string() if hasattr(effective, "to_string") else str(effective)
        if effective != _HINTS[precision]:
            raise BackendError(f"asked OpenVINO for {precision} but it compiled {effective}; refusing to run silently")
        self.precision = precision
        self.input_names = tuple(port.get_any_name() for port in self._compiled.inputs)
        self.output_names = tuple(_public_name(port) for port in self._compiled.outputs)
        # Every name of every output: one tensor can carry several (ALBERT's and ELECTRA's hidden_states.0 is also
        # their embedding projection's output), and get_any_name() gives only one of them.
        self._all_output_names = frozenset(name for port in self._compiled.outputs for name in port.get_names())
        self._head: Any = None  # the graph compiled with HEAD_OUTPUTS only, made on first use
        self._head_pays = not set(self.output_names) <= HEAD_OUTPUTS  # the graph has outputs beyond the head's
        self._whole_ran = False
        self._lock = threading.Lock()
        self._local = threading.local()

    def _compile(self, outputs: frozenset[str] | None) -> Any:
        """The graph compiled with every output (``None``) or only ``outputs``; read from disk each time, so no
        uncompiled copy of the weights stays in memory."""
        ov = _openvino()
        try:
            model = self._core.read_model(str(self._path))
            if outputs is not None:
                results = [r for r in model.get_results() if outputs & set(r.output(0).get_names())]
                model = ov.Model(results, model.get_parameters(), model.get_friendly_name())
            return self._core.compile_model(model, "CPU", self._config)
        except RuntimeError as exc:
            raise ModelFolderError(f"{self._path}: OpenVINO cannot compile this model ({exc})") from exc

    def _compiled_for(self, names: Sequence[str]) -> tuple[str, Any]:
        """The compiled graph for a call asking for ``names``: the head graph when they are all head outputs."""
        with self._lock:
            if self._head_pays and HEAD_OUTPUTS.issuperset(names):
                if self._head is None:
                    self._head = self._compile(HEAD_OUTPUTS)
                    if not self._whole_ran:
                        self._compiled = None  # release it: recompiled if a call ever needs a hidden state
                return "head", self._head
            if self._compiled is None:
                self._compiled = self._compile(None)
            self._whole_ran = True
            return "whole", self._compiled

    def _request(self, names: Sequence[str]) -> Any:
        key, compiled = self._compiled_for(names)
        requests: dict[str, tuple[Any, Any]] = self._local.__dict__.setdefault("requests", {})
        held = requests.get(key)
        if held is None or held[0] is not compiled:  # first call here, or its compiled model was replaced
            held = requests[key] = (compiled, compiled.create_infer_request())
        return held[1]

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        unknown = [name for name in names if name not in self._all_output_names]
        if unknown:
            raise InvalidValueError(f"no output named {', '.join(map(repr, unknown))}; outputs: {self.output_names}")
        request = self._request(names)
        request.infer(dict(feeds))
        # Copies: the request's buffers are reused by its next call.
        return [np.array(request.get_tensor(name).data, dtype=np.float32) for name in names]
