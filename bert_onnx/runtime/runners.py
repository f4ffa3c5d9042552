"""What runs a graph: one small interface, one implementation per backend, each owning its own options.

``Encoder`` reads the manifest, picks and verifies a graph, and then only calls a :class:`Runner`: it never knows
which backend runs it. ONNX Runtime's runner (plain or IO binding) lives here; OpenVINO's in
:mod:`bert_onnx.runtime.openvino_backend`; each backend's option rules in :mod:`bert_onnx.runtime.backends`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from bert_onnx.runtime.session import create_session


class Runner(Protocol):
    """A loaded graph: its input and output names, and a thread-safe ``run`` of the named outputs."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


class OnnxRuntimeRunner:
    """One ONNX Runtime session on ``device`` (see :func:`~bert_onnx.runtime.session.create_session`).

    ``io_binding``: outputs are allocated on the device and only the requested ones are copied to host memory
    (default: on for CUDA, off for CPU, where it gains nothing).
    """

    def __init__(
        self,
        model_path: Path,
        device: str = "cpu",
        threads: int | None = None,
        io_binding: bool | None = None,
        cache_dir: Path | None = None,
        model_sha256: str | None = None,
    ) -> None:
        self.session = create_session(
            model_path, device=device, threads=threads, cache_dir=cache_dir, model_sha256=model_sha256
        )
        self.device = device
        self.io_binding = device == "cuda" if io_binding is None else io_binding
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if not self.io_binding:
            return list(self.session.run(list(names), dict(feeds)))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in names:  # only the requested outputs are bound and copied to host memory
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        return [value.numpy() for value in binding.get_outputs()]
