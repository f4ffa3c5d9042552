"""Backends and choice resolution: which :class:`~bert_onnx.choices.Choice` runs, and who opens it.

Each backend owns its own options (which ``Encoder`` keywords it takes, which devices, what the CPU must have)
and opens a choice's graph as a :class:`~bert_onnx.runtime.runners.Runner`. :func:`resolve` is the pure step from
``Encoder``'s keywords and this machine's tuned profile to one choice. ``Encoder`` never names a backend.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bert_onnx import choices, machine
from bert_onnx.choices import Choice
from bert_onnx.errors import InvalidTypeError, InvalidValueError
from bert_onnx.manifest import Manifest
from bert_onnx.runtime import profile
from bert_onnx.runtime.runners import OnnxRuntimeRunner, Runner


@dataclass(frozen=True)
class Opening:
    """How to open a choice's graph: the path, device, threads and the options every backend is told."""

    path: Path
    device: str
    threads: int | None
    io_binding: bool | None
    cache_dir: Path | None
    sha256: str | None


class Backend(Protocol):
    """A way to execute graphs: its own option rules, why a choice cannot run here, and how to open one."""

    name: str

    def choice_for(self, variant: str | None, precision: str | None) -> Choice:
        """The choice ``Encoder(backend=self.name, variant=..., precision=...)`` asks for, or an error."""
        ...

    def check_options(self, device: str, io_binding: bool | None) -> None:
        """Refuse ``Encoder`` options this backend does not take (``InvalidValueError`` saying why)."""
        ...

    def unavailable(self, choice: Choice, device: str, manifest: Manifest) -> str | None:
        """Why ``choice`` cannot run (exactly) here, or ``None``."""
        ...

    def open(self, choice: Choice, opening: Opening) -> Runner: ...


def int8_weights(manifest: Manifest, choice: Choice) -> str:
    """How ``choice``'s int8 graph stores its weights (``s8``, ``s7`` or ``u8``: :mod:`bert_onnx.export.int8`), as its
    export recorded: ``extra["int8_weights"]`` for ``int8``, ``extra["opt_int8_weights"]`` for ``opt-int8``
    (folders exported before the two could differ record ``int8_weights`` for both; older ones nothing: s8)."""
    shared = str(manifest.extra.get("int8_weights", "s8"))
    return str(manifest.extra.get(choices.int8_weights_key(choice.name), shared))


def int8_clips_here(manifest: Manifest, choice: Choice) -> str | None:
    """Why ``choice``'s int8 graph computes differently on this CPU than where its gate was measured, if it does:
    signed 8-bit weights on a CPU without VNNI, whose kernels add products in saturating int16. ONNX Runtime's int8
    choices only (OpenVINO's int8 is compiled for the CPU it runs on)."""
    if choice.backend != choices.ONNXRUNTIME or choice.precision != "int8" or choice.name not in manifest.variants:
        return None
    if int8_weights(manifest, choice) != "s8" or machine.has_vnni():
        return None
    return (
        "its weights are signed 8-bit (exported on a CPU with VNNI) and this CPU has no VNNI, so ONNX Runtime's int8 "
        "kernels clip large products here; re-export on this machine for an int8 graph that is exact on it"
    )


class OnnxRuntimeBackend:
    """ONNX Runtime running a stored graph (``variant=``) on the CPU or CUDA, optionally through IO binding."""

    name = choices.ONNXRUNTIME

    def choice_for(self, variant: str | None, precision: str | None) -> Choice:
        if precision is not None:
            raise InvalidValueError(
                "precision= applies to backend='openvino'; with ONNX Runtime pick a variant= instead "
                f"({', '.join(choices.variants())})"
            )
        if variant is None:
            return choices.default_for(self.name)
        found = [c for c in choices.of_backend(self.name) if c.variant == variant]
        if found:
            return found[0]
        other = [c for c in choices.CHOICES.values() if c.name == variant and c.backend != self.name]
        if other:
            raise InvalidValueError(
                f"variant={variant!r} is the choice of {other[0].backend} running {other[0].file}; use {other[0].label}"
            )
        raise InvalidValueError(f"variant={variant!r} is not one of {', '.join(choices.variants())}")

    def check_options(self, device: str, io_binding: bool | None) -> None:
        if io_binding is not None and not isinstance(io_binding, bool):
            raise InvalidTypeError(f"io_binding={io_binding!r} must be True, False or None")

    def unavailable(self, choice: Choice, device: str, manifest: Manifest) -> str | None:
        if device not in choice.devices:
            return f"the {choice.name} graph runs on {', '.join(choice.devices)}, not {device}"
        return int8_clips_here(manifest, choice)

    def open(self, choice: Choice, opening: Opening) -> Runner:
        return OnnxRuntimeRunner(
            opening.path,
            device=opening.device,
            threads=opening.threads,
            io_binding=opening.io_binding,
            cache_dir=opening.cache_dir,
            model_sha256=opening.sha256,
        )


class OpenVINOBackend:
    """OpenVINO compiling a graph on the CPU at a precision (extra ``[openvino]``; imported only when used)."""

    name = choices.OPENVINO

    def choice_for(self, variant: str | None, precision: str | None) -> Choice:
        if variant not in (None, "fp32"):
            raise InvalidValueError(
                f"backend='openvino' compiles the fp32 graph (model.onnx) at a precision, not variant={variant!r}; "
                f"pick precision= ({', '.join(choices.precisions(self.name))})"
            )
        wanted = precision or "fp32"
        found = [c for c in choices.of_backend(self.name) if c.precision == wanted]
        if not found:
            raise InvalidValueError(f"precision={wanted!r} is not one of {', '.join(choices.precisions(self.name))}")
        return found[0]

    def check_options(self, device: str, io_binding: bool | None) -> None:
        if device != "cpu":
            raise InvalidValueError(f"backend='openvino' runs on device='cpu', not {device!r}")
        if io_binding:
            raise InvalidValueError("io_binding is an ONNX Runtime feature; backend='openvino' does not use it")

    def unavailable(self, choice: Choice, device: str, manifest: Manifest) -> str | None:
        from bert_onnx.runtime import openvino_backend

        if device != "cpu":
            return "OpenVINO runs on the CPU only"
        try:
            openvino_backend.cpu_capabilities()  # imports openvino
            openvino_backend.check_precision(choice.precision)
        except openvino_backend.BackendError as exc:
            return str(exc)
        return None

    def open(self, choice: Choice, opening: Opening) -> Runner:
        from bert_onnx.runtime.openvino_backend import OpenVINOSession

        return OpenVINOSession(opening.path, choice.precision, opening.threads, opening.cache_dir)


BACKENDS: dict[str, Backend] = {b.name: b for b in (OnnxRuntimeBackend(), OpenVINOBackend())}


def backend_of(choice: Choice) -> Backend:
    return BACKENDS[choice.backend]


@dataclass(frozen=True)
class Resolved:
    """The choice ``Encoder`` runs and how it was picked (``profile.Pick``: asked for, tuned here, or default)."""

    choice: Choice
    pick: profile.Pick


def resolve(
    manifest: Manifest,
    device: str,
    threads: int | None,
    variant: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
    io_binding: bool | None = None,
) -> Resolved:
    """The choice ``Encoder``'s keywords ask for; not told which, the fastest passing one tuned here among those
    whose backend takes the options given (within ``backend`` if given; ``io_binding=True``: ONNX Runtime's), else
    the backend's fp32. Checks only the names: the backend's ``check_options`` checks the options,
    :func:`check_runnable` the folder."""
    if backend is not None and backend not in BACKENDS:
        raise InvalidValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if variant is not None or precision is not None:
        choice = BACKENDS[backend or choices.ONNXRUNTIME].choice_for(variant, precision)
        return Resolved(choice, profile.Pick(choice.name, "asked for", tuned=False))

    def passed_over(choice: Choice) -> str | None:
        # Why a tuned choice is not what these keywords ask for: never run something other than what was asked.
        if backend is not None and choice.backend != backend:
            return f"backend={backend!r} was asked for"
        try:
            BACKENDS[choice.backend].check_options(device, io_binding)
        except InvalidValueError as exc:
            return str(exc)
        return None

    pick = profile.lookup(manifest, device, threads, passed_over)
    choice = choices.get(pick.name) if pick.name is not None else choices.default_for(backend)
    return Resolved(choice, pick)


def check_runnable(manifest: Manifest, model_dir: Path, resolved: Resolved, device: str) -> None:
    """Refuse a choice the folder does not hold or that is not for ``device``."""
    choice = resolved.choice
    if choice.name not in manifest.variants and choice.own_file:
        raise InvalidValueError(
            f"{choice.label} is not in {model_dir} (it has {', '.join(manifest.variants)}); "
            f"export it with --variants {choice.name}"
        )
    if device not in choice.devices:
        raise InvalidValueError(f"{choice.label} runs on {', '.join(choice.devices)}, not device={device!r}")


def warn_unvouched(manifest: Manifest, model_dir: Path, resolved: Resolved) -> None:
    """Warn where the export gate does not vouch for the choice here: not recorded at export (and not measured
    here by ``tune``), or int8 kernels that clip on this CPU."""
    choice = resolved.choice
    if choice.name not in manifest.variants and not resolved.pick.tuned:
        warnings.warn(
            f"bert-onnx: {choice.title} was not validated for {model_dir} at export; export with --variants "
            f"fp32,{choice.name} to check it against PyTorch and record its gate",
            stacklevel=3,
        )
    clipped = int8_clips_here(manifest, choice)
    if clipped:
        warnings.warn(f"bert-onnx: {choice.name}'s export gate does not hold here: {clipped}", stacklevel=3)
