"""OpenVINO int8 choices: ``model.onnx`` statically quantized by NNCF at export, stored as an OpenVINO IR.

``nncf.quantize`` (model type TRANSFORMER) inserts int8 quantizers with scales measured once, on calibration texts
of both gate corpora (:mod:`bert_onnx.export.corpus`; disjoint from the texts the gate measures). The scales are
constants, not measured per batch. OpenVINO then runs the int8 matrix products on
VNNI or AMX units and fuses the float work around them; the operations left in float run in fp32
(``openvino-int8``) or bf16 (``openvino-int8-bf16``).

The gate is the int8 embeddings gate, on both corpora. If the fully quantized graph misses it on accuracy, the FFN
down-projections (which read GELU's lopsided output; the same ones :func:`bert_onnx.export.variants.int8_ladder`
names) are kept in float, then the attention output projections too. The ladder is for accuracy: it stops at the
first rung that misses batch invariance, which keeping MatMuls in float has not repaired on any CPU measured.
OpenVINO 2026.4 on an AVX-512 VNNI CPU: a text's embedding alone and in a batch of 24 or more differed by up to
2.5e-3 (MiniLM; batches of up to 16 were identical, with 1 or 2 threads; the likely cause is float kernels chosen
by shape rounding differently, a difference that moves an int8 value by a whole step); with 0, 12 and 24 MatMuls
in float the gate measured 7.1e-4, 5.3e-4 and 5.2e-4 (bert-base). On an AMX Xeon, MiniLM's three rungs measured
2.5e-3, 2.4e-3 and 1.9e-3 (with bf16 for the rest 0.084, 0.088 and 0.085), against the limit of 1e-4. There the
choice misses its gate and is not stored.

The IR is written with its weights in fp32 (no fp16 compression), as ``model.openvino-int8*.xml`` + ``.bin``; both
are checksummed in the manifest.

Export needs ``nncf`` (in the ``[openvino]`` extra); running the IR needs only ``openvino``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bert_onnx.export.corpus import CORPORA, split
from bert_onnx.export.errors import ExportError
from bert_onnx.gates import BATCH_INVARIANCE_CHECK
from bert_onnx.manifest import VariantRecord
from bert_onnx.runtime.tokenizer import Tokenizer

if TYPE_CHECKING:
    from bert_onnx.export.variants import Build

CALIBRATION_TEXTS = 200  # per corpus, one text per sample (no padding in the statistics)


def nncf_missing() -> str | None:
    """Why the OpenVINO int8 choices cannot be built here, if they cannot: NNCF is not installed."""
    try:
        import nncf  # noqa: F401
    except ImportError as exc:
        return f"building an OpenVINO int8 graph needs nncf: pip install 'bert-onnx[openvino]' ({exc})"
    return None


def calibration_feeds(tokenizer: Tokenizer, max_length: int, gate_texts: int) -> list[dict[str, Any]]:
    """One text per sample from each corpus, taken after the ``gate_texts`` the gate measures."""
    texts: list[str] = []
    for corpus in CORPORA:
        texts += split(gate_texts, CALIBRATION_TEXTS, corpus=corpus)[1]
    return [tokenizer([text], max_length=max_length).feeds() for text in texts]


def float_ladder(fp32_path: Path, down_projections: Sequence[str]) -> list[tuple[str, ...]]:
    """The node sets kept in float, tried in order: none, the FFN down-projections, and the attention output
    projections too."""
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    attention_out = [n.name for n in graph.node if re.search(r"/attention/output/dense/MatMul$", n.name)]
    down = tuple(down_projections)
    return [(), down, (*down, *attention_out)]


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs a line at INFO for every MatMul it leaves unquantized (hundreds on bert-base); export reports
    what was kept in float itself, so only NNCF's warnings and its progress bars reach the user."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


_CACHE: dict[tuple[object, ...], Any] = {}  # recent quantized models: the fp32 and bf16 choices share them


def quantized_model(fp32_path: Path, float_nodes: Sequence[str], feeds: list[dict[str, Any]]) -> Any:
    """``fp32_path`` statically quantized (an ``ov.Model``) with ``float_nodes`` left in float."""
    import nncf
    import openvino as ov

    stat = fp32_path.stat()
    key = (str(fp32_path), stat.st_mtime_ns, stat.st_size, tuple(float_nodes), len(feeds))
    if key not in _CACHE:
        if len(_CACHE) >= 3:
            _CACHE.pop(next(iter(_CACHE)))
        with _quiet_nncf():
            _CACHE[key] = nncf.quantize(
                ov.Core().read_model(str(fp32_path)),
                nncf.Dataset(feeds),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(feeds),
                ignored_scope=nncf.IgnoredScope(names=list(float_nodes), validate=False),
            )
    return _CACHE[key]


def write_quantized(fp32_path: Path, target: Path, float_nodes: Sequence[str], feeds: list[dict[str, Any]]) -> None:
    """Quantize ``fp32_path`` with ``float_nodes`` left in float and save the IR at ``target`` (+ its ``.bin``)."""
    import openvino as ov

    ov.save_model(quantized_model(fp32_path, float_nodes, feeds), str(target), compress_to_fp16=False)
    if not target.with_suffix(".bin").is_file():
        raise ExportError(f"OpenVINO wrote no {target.with_suffix('.bin').name} beside {target.name}")


def make_openvino_int8(
    build: Build, down_projections: Sequence[str], gate_texts: int
) -> tuple[VariantRecord, dict[str, object]]:
    """Climb :func:`float_ladder` until the quantized IR passes the gate, stopping at a rung that misses batch
    invariance; the last failure if none passes."""
    if build.choice.extra_files != (build.target.with_suffix(".bin").name,):
        raise ExportError(f"{build.choice.name}: its extra file must be the IR's {build.target.with_suffix('.bin')}")
    feeds = calibration_feeds(build.tokenizer, build.max_length, gate_texts)
    record: VariantRecord | None = None
    kept: tuple[str, ...] = ()
    for kept in float_ladder(build.fp32_path, down_projections):
        write_quantized(build.fp32_path, build.target, kept, feeds)
        details = (
            f"NNCF static int8 (TRANSFORMER), calibrated on {len(feeds)} texts of both corpora; "
            f"{len(kept)} MatMul(s) kept in float: {', '.join(kept) or 'none'}"
        )
        record = build.measure(details)
        build.log(
            f"{build.choice.name} with {len(kept)} float MatMul(s): "
            + ", ".join(f"{c.name} {c.value:.4g}" for c in record.checks)
        )
        if record.passed or any(c.name == BATCH_INVARIANCE_CHECK for c in record.failures):
            break  # more float MatMuls have not made it batch-invariant (module docstring)
    assert record is not None
    return record, {f"{build.choice.name}_float_nodes": list(kept)}
