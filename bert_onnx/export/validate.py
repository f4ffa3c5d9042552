"""Export-time parity: the ONNX graph against the PyTorch model it came from, output by output."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert_onnx import families, interface
from bert_onnx.errors import InvalidValueError
from bert_onnx.gates import max_abs_diffs, real_tokens
from bert_onnx.manifest import OutputParity, ParityReport
from bert_onnx.runtime.session import create_session

_SENTENCES = (
    "I love Korea",
    "Hello!",
    "The quick brown fox jumps over the lazy dog near the riverbank on a sunny afternoon.",
)
_PAIR = ("How old are you?", "I am six years old and I live in Seoul.")
SHORT_ROWS = len(_SENTENCES) + 1  # the rows of validation_batch before the max_length row
_LONG = "Extracting embeddings from every encoder layer of BERT gives features for many tasks. "


def validation_batch(tokenizer: Any, max_length: int, input_names: Sequence[str]) -> tuple[dict[str, np.ndarray], str]:
    """A right-padded batch of the graph inputs ``input_names``: short sentences of different lengths, a sentence
    pair (with segment ids of 1 where the graph takes them), and one row of exactly ``max_length`` tokens (512 for
    BERT), so every position embedding is exercised and windowed attention sees texts longer than its window."""
    rows = [tokenizer(text)["input_ids"] for text in _SENTENCES]
    types = [[0] * len(r) for r in rows]
    # Asked for explicitly: a tokenizer whose class emits no segment ids (RoBERTa's, the generic fast one) still
    # has its pair template's type ids, which a graph that takes them needs.
    pair = tokenizer(*_PAIR, return_token_type_ids=True)
    rows.append(pair["input_ids"])
    types.append(pair["token_type_ids"])
    long = tokenizer(_LONG * (max_length // 8 + 1), truncation=True, max_length=max_length)["input_ids"]
    rows.append(long)
    types.append([0] * len(long))

    width = max(len(r) for r in rows)
    arrays = {name: np.zeros((len(rows), width), dtype=np.int64) for name in interface.INPUT_NAMES}
    arrays[families.INPUT_IDS][:] = tokenizer.pad_token_id
    for i, (ids, segments) in enumerate(zip(rows, types, strict=True)):
        arrays[families.INPUT_IDS][i, : len(ids)] = ids
        arrays[families.ATTENTION_MASK][i, : len(ids)] = 1
        arrays[families.TOKEN_TYPE_IDS][i, : len(ids)] = segments
    lengths = [len(r) for r in rows]
    segments_note = " with token_type_ids 1" if families.TOKEN_TYPE_IDS in input_names else ""
    description = (
        f"{len(rows)} rows right-padded to {width} tokens; lengths {lengths}; "
        f"row {len(_SENTENCES)} is a sentence pair{segments_note}"
    )
    return {name: arrays[name] for name in input_names}, description


def compare(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    attention_mask: np.ndarray,
    tolerance: float = interface.FP32_TOLERANCE,
) -> tuple[OutputParity, ...]:
    """Max abs diff per output over the non-padded positions of every row (padded positions are undefined in
    these models)."""
    for name, expected in reference.items():
        if candidate[name].shape != expected.shape:
            raise InvalidValueError(f"{name}: shape {candidate[name].shape} differs from PyTorch's {expected.shape}")
    actual = {name: candidate[name] for name in reference}
    diffs = max_abs_diffs(real_tokens(reference, attention_mask), real_tokens(actual, attention_mask))
    return tuple(OutputParity(name=name, max_abs_diff=diff, tolerance=tolerance) for name, diff in diffs.items())


def torch_outputs(model: Any, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every interface output of ``model`` (a family's base model) on ``batch``, by name."""
    from bert_onnx.export.graph import AllOutputs, graph_outputs

    wrapper = AllOutputs(model).eval()
    with torch.no_grad():
        values = wrapper(*(torch.from_numpy(batch[name]) for name in wrapper.input_names))
    names = graph_outputs(model.config)
    return {name: value.numpy() for name, value in zip(names, values, strict=True)}


def run_both(
    model: Any, onnx_path: Path, tokenizer: Any, max_length: int, device: str = "cpu"
) -> tuple[dict[str, np.ndarray], str, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """:func:`validation_batch` through PyTorch and through the graph on ``device``:
    (batch, its description, PyTorch's outputs, the graph's outputs), outputs by name."""
    from bert_onnx.export.graph import graph_inputs

    batch, description = validation_batch(tokenizer, max_length, graph_inputs(model.config))
    expected = torch_outputs(model, batch)
    session = create_session(onnx_path, device=device)
    names = list(expected)
    actual = dict(zip(names, session.run(names, batch), strict=True))
    return batch, description, expected, actual


def parity(
    model: Any, onnx_path: Path, tokenizer: Any, max_length: int
) -> tuple[ParityReport, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run PyTorch and ONNX Runtime (CPU) on :func:`validation_batch` and compare every output: the report, the
    batch, and PyTorch's outputs on it (kept as the gates' references)."""
    batch, description, expected, actual = run_both(model, onnx_path, tokenizer, max_length)
    report = ParityReport(
        batch_size=int(batch["input_ids"].shape[0]),
        sequence_length=int(batch["input_ids"].shape[1]),
        description=description,
        outputs=compare(expected, actual, batch["attention_mask"]),
    )
    return report, batch, expected


def validate_graph(model: Any, onnx_path: Path, tokenizer: Any, max_length: int) -> ParityReport:
    """:func:`parity`'s report only."""
    return parity(model, onnx_path, tokenizer, max_length)[0]
