"""The one declaration both sides of the seam read: graph inputs/outputs, their axes, and the folder's files.

Export writes a graph with exactly these names; the runtime, the manifest and the tests read them from here.
Which inputs a graph takes, and whether it has a ``pooler_output``, depend on its model family
(:mod:`bert_onnx.families`); the names and their order do not. This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bert_onnx import families
from bert_onnx.errors import InvalidValueError

# Axis index -> symbolic name, per tensor. Sequence outputs are (batch, sequence, hidden); pooler is (batch, hidden).
SEQUENCE_AXES: Mapping[int, str] = {0: "batch", 1: "sequence"}
BATCH_AXES: Mapping[int, str] = {0: "batch"}

# Every input a graph may take, in graph order; a family's graph takes a prefix-ordered subset (BERT: all three).
INPUT_NAMES: tuple[str, ...] = (families.INPUT_IDS, families.ATTENTION_MASK, families.TOKEN_TYPE_IDS)
LAST_HIDDEN_STATE = "last_hidden_state"
POOLER_OUTPUT = "pooler_output"
HIDDEN_STATES_PREFIX = "hidden_states."

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
# Files whose SHA-256 the manifest records and the runtime verifies (the manifest cannot hash itself).
CHECKSUMMED_FILES: tuple[str, ...] = (MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE)
# PyTorch's reference outputs for the accuracy gates (bert_onnx.gates), for `bert-onnx verify` and `tune`; also
# checksummed. Folders from before it existed load and run, but cannot be verified or tuned.
GATES_FILE = "gates.npz"
# The weights of the Dense layers a sentence-transformers recipe applies after pooling (``name.weight``,
# ``name.bias``, ``name.residual`` float32 arrays), present only when the recipe has some; also checksummed.
RECIPE_WEIGHTS_FILE = "recipe.npz"

# The gate export validation applies to every fp32 output (max abs diff to PyTorch, non-padded positions).
FP32_TOLERANCE = 1e-4

# The ways of running a folder (its graph files, backends, gates) are the registry in bert_onnx.choices.


def hidden_state_name(index: int) -> str:
    """Graph output name of hidden state ``index`` (0 = embeddings, N = last encoder layer)."""
    return f"{HIDDEN_STATES_PREFIX}{index}"


def output_names(num_layers: int, pooler: bool = True) -> tuple[str, ...]:
    """All graph outputs, in graph order: last_hidden_state, pooler_output (where the family has a pooler),
    hidden_states.0 … hidden_states.N."""
    if num_layers < 1:
        raise InvalidValueError(f"num_layers={num_layers} must be at least 1")
    pooled = (POOLER_OUTPUT,) if pooler else ()
    return (LAST_HIDDEN_STATE, *pooled, *(hidden_state_name(i) for i in range(num_layers + 1)))


def input_axes(names: Sequence[str] = INPUT_NAMES) -> dict[str, dict[int, str]]:
    """Dynamic axes of the graph inputs ``names`` (all int64, shape (batch, sequence)), in graph order."""
    unknown = [name for name in names if name not in INPUT_NAMES]
    if unknown or list(names) != [name for name in INPUT_NAMES if name in names]:
        raise InvalidValueError(f"graph inputs {list(names)} are not an ordered subset of {list(INPUT_NAMES)}")
    return {name: dict(SEQUENCE_AXES) for name in names}


def output_axes(num_layers: int, pooler: bool = True) -> dict[str, dict[int, str]]:
    """Dynamic axes of every graph output, keyed by output name, in graph order."""
    return {
        name: dict(BATCH_AXES if name == POOLER_OUTPUT else SEQUENCE_AXES) for name in output_names(num_layers, pooler)
    }
