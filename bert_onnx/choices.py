"""The ways of running a model folder, one registry: what each *choice* runs, on what, and the gate it must pass.

A choice is one way to run a folder: a graph file, the backend that runs it, the arithmetic it does, the devices
it runs on, and the accuracy gate it passed at export. Export builds and gates choices, the runtime runs one,
``bert-onnx verify``/``tune`` measure them all, and the command line lists them, all from :data:`CHOICES`.

Adding a way of running is one :class:`Choice` entry here, its builder in :mod:`bert_onnx.export.variants` (if it
has a file of its own), and, for a new backend, a :class:`~bert_onnx.runtime.backends.Backend`. See
docs/architecture.md. This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bert_onnx import interface
from bert_onnx.errors import InvalidValueError

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
BACKEND_NAMES: tuple[str, ...] = (ONNXRUNTIME, OPENVINO)
DEVICES: tuple[str, ...] = ("cpu", "cuda")
BACKEND_TITLES: Mapping[str, str] = {ONNXRUNTIME: "ONNX Runtime", OPENVINO: "OpenVINO"}

# What a gate compares, against PyTorch fp32 (bert_onnx.gates measures each kind):
MAX_ABS_DIFF = "max abs diff"  # per output, real tokens of the parity batch, <= limit
TOKEN_COSINE = "token cosine"  # per output, minimum per-token cosine on the parity batch, >= limit
EMBEDDINGS = "embeddings"  # mean-pooled normalized sentence embeddings of real text (the int8 gate) + invariance
GATE_KINDS: tuple[str, ...] = (MAX_ABS_DIFF, TOKEN_COSINE, EMBEDDINGS)


@dataclass(frozen=True)
class Gate:
    """An accuracy gate as data: what is compared and the limit (``EMBEDDINGS`` reads its limits from
    :data:`bert_onnx.gates.INT8_GATE`)."""

    kind: str
    limit: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in GATE_KINDS:
            raise InvalidValueError(f"gate kind {self.kind!r} is not one of {', '.join(GATE_KINDS)}")
        if (self.kind == EMBEDDINGS) != (self.limit is None):
            raise InvalidValueError(
                f"a {self.kind!r} gate {'takes no' if self.kind == EMBEDDINGS else 'needs a'} limit"
            )


@dataclass(frozen=True)
class Choice:
    """One way to run a folder.

    ``file``: the graph it runs (``model.onnx`` for the choices that compile the fp32 graph); ``own_file``: export
    writes that file for this choice, so the folder must hold it to run. ``extra_files``: other files of its own
    the graph reads (an OpenVINO IR's weights), written, checksummed and verified with it. ``variant``: the graph's
    name as ``Encoder(variant=...)`` takes it (ONNX Runtime choices); ``precision``: the arithmetic, as
    ``Encoder(precision=...)`` takes it for backends that compile a graph at a precision (OpenVINO).
    """

    name: str
    backend: str
    file: str
    devices: tuple[str, ...]
    precision: str
    gate: Gate
    own_file: bool
    summary: str
    variant: str | None = None
    extra_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_NAMES:
            raise InvalidValueError(f"choice {self.name!r}: backend {self.backend!r} is not one of {BACKEND_NAMES}")
        if self.extra_files and not self.own_file:
            raise InvalidValueError(f"choice {self.name!r}: extra_files belong to a file of its own")

    @property
    def all_files(self) -> tuple[str, ...]:
        """The graph file and the files it reads: what must be present and intact to run this choice."""
        return (self.file, *self.extra_files)

    @property
    def title(self) -> str:
        """How messages name it: "int8" under ONNX Runtime, "OpenVINO bf16" for another backend."""
        return self.name if self.backend == ONNXRUNTIME else f"{BACKEND_TITLES[self.backend]} {self.precision}"

    @property
    def keywords(self) -> dict[str, str]:
        """``Encoder``'s keyword arguments that run this choice."""
        if self.variant is not None:
            return {"backend": self.backend, "variant": self.variant}
        return {"backend": self.backend, "precision": self.precision}

    @property
    def label(self) -> str:
        """:attr:`keywords`, as they are typed."""
        return ", ".join(f"{key}={value!r}" for key, value in self.keywords.items() if key != "backend" or
                         value != ONNXRUNTIME)  # fmt: skip


_FP32 = Gate(MAX_ABS_DIFF, interface.FP32_TOLERANCE)

CHOICES: Mapping[str, Choice] = {
    c.name: c
    for c in (
        Choice("fp32", ONNXRUNTIME, interface.MODEL_FILE, ("cpu", "cuda"), "fp32", _FP32, False,
               "the exported graph, as PyTorch computes it", variant="fp32"),
        Choice("opt", ONNXRUNTIME, "model.opt.onnx", ("cpu", "cuda"), "fp32", _FP32, True,
               "ONNX Runtime's transformer fusions (Attention, SkipLayerNorm, BiasGelu)", variant="opt"),
        Choice("int8", ONNXRUNTIME, "model.int8.onnx", ("cpu",), "int8", Gate(EMBEDDINGS), True,
               "per-token int8 MatMuls (CPU)", variant="int8"),
        Choice("fp16", ONNXRUNTIME, "model.fp16.onnx", ("cuda",), "fp16", Gate(TOKEN_COSINE, 0.999), True,
               "the fused graph in half precision, fp32 inputs and outputs (CUDA)", variant="fp16"),
        Choice("openvino-fp32", OPENVINO, interface.MODEL_FILE, ("cpu",), "fp32", _FP32, False,
               "model.onnx compiled by OpenVINO in fp32"),
        Choice("openvino-bf16", OPENVINO, interface.MODEL_FILE, ("cpu",), "bf16", Gate(TOKEN_COSINE, 0.9999), False,
               "model.onnx compiled by OpenVINO with bf16 arithmetic (CPUs with bf16 units)"),
        Choice("opt-int8", ONNXRUNTIME, "model.opt-int8.onnx", ("cpu",), "int8", Gate(EMBEDDINGS), True,
               "ONNX Runtime's fusions with per-token int8 MatMuls, the QKV projection included (CPU)",
               variant="opt-int8"),
        Choice("openvino-int8", OPENVINO, "model.openvino-int8.xml", ("cpu",), "int8", Gate(EMBEDDINGS), True,
               "static int8 by NNCF, calibrated on both gate corpora, run by OpenVINO with fp32 elsewhere",
               extra_files=("model.openvino-int8.bin",)),
        Choice("openvino-int8-bf16", OPENVINO, "model.openvino-int8-bf16.xml", ("cpu",), "int8-bf16",
               Gate(EMBEDDINGS), True,
               "static int8 by NNCF, run by OpenVINO with bf16 elsewhere (CPUs with bf16 units)",
               extra_files=("model.openvino-int8-bf16.bin",)),
    )
}  # fmt: skip
NAMES: tuple[str, ...] = tuple(CHOICES)
DEFAULT = "fp32"  # what runs when nothing was asked for and nothing was tuned here: the exact one


def get(name: str) -> Choice:
    """The choice called ``name``, or an error listing them."""
    try:
        return CHOICES[name]
    except (KeyError, TypeError):
        raise InvalidValueError(f"choice {name!r} is not one of {', '.join(NAMES)}") from None


def of_backend(backend: str) -> tuple[Choice, ...]:
    """The choices ``backend`` runs, in registry order."""
    return tuple(c for c in CHOICES.values() if c.backend == backend)


def default_for(backend: str | None) -> Choice:
    """What runs untuned: fp32 under ``backend`` (ONNX Runtime when not given)."""
    return next(c for c in of_backend(backend or ONNXRUNTIME) if c.precision == "fp32" and not c.own_file)


def int8_weights_key(name: str) -> str:
    """The manifest's ``extra`` key where an int8 choice's export records how its weights are stored
    (``int8_weights``, ``opt_int8_weights``)."""
    return f"{name.replace('-', '_')}_weights"


def variants() -> tuple[str, ...]:
    """The graph names ``Encoder(variant=...)`` and ``bert-onnx embed --variant`` take."""
    return tuple(c.variant for c in CHOICES.values() if c.variant is not None)


def precisions(backend: str) -> tuple[str, ...]:
    """The precisions ``Encoder(backend=..., precision=...)`` takes for a backend that compiles at a precision."""
    return tuple(c.precision for c in of_backend(backend) if c.variant is None)


def files() -> tuple[str, ...]:
    """Every file a choice may run or read, each once."""
    return tuple(dict.fromkeys(f for c in CHOICES.values() for f in c.all_files))
