"""The accuracy gates as numbers anyone can re-measure: PyTorch's reference outputs, stored at export.

Export checks every variant against PyTorch fp32. ``gates.npz`` keeps what that needs without PyTorch, so
``bert-onnx verify`` and ``bert-onnx tune`` check a folder again on the machine it runs on (int8 rounds, and
OpenVINO compiles, differently per CPU):

- the parity batch (short sentences of different lengths, a sentence pair, a ``max_length``-token row) and
  PyTorch's outputs on it: every output on the short rows' real tokens, ``last_hidden_state`` on every row's real
  tokens, ``pooler_output`` on every row. Every hidden state of the long row too would make the file about six
  times larger; damage anywhere in the graph reaches that row's ``last_hidden_state``.
- the embeddings gate's real texts (UTF-8), one set per corpus (documentation paragraphs, and short informal texts:
  quotes and one-liners; :mod:`bert_onnx.export.corpus`) and, when the folder has an int8 graph, PyTorch's
  mean-pooled normalized embeddings of them.

The file holds only numeric arrays, is read with ``allow_pickle=False``, and its SHA-256 is in the manifest. This
module imports neither torch nor transformers.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bert_onnx import choices, interface
from bert_onnx._files import atomic_write
from bert_onnx.choices import Choice, Gate
from bert_onnx.errors import InvalidValueError
from bert_onnx.manifest import Check, ModelFolderError
from bert_onnx.runtime.batching import tokenized_batches
from bert_onnx.runtime.recipe import EmbedRecipe
from bert_onnx.runtime.tokenizer import Tokenizer

INT8_GATE = {"mean cosine": 0.997, "min cosine": 0.985, "top-10 agreement": 0.95}
BATCH_INVARIANCE_CHECK = "batch invariance max abs diff"
INT8_BATCH_TOLERANCE = 1e-4  # normalized embedding alone vs in company; per-token int8 gives 0 here
INVARIANCE_TEXTS = 32
_LONG_TEXT = "Embeddings of one text must not depend on the other texts in its batch. "
_FORMAT = 2  # 2: one text set (and reference embeddings) per corpus; 1: the documentation paragraphs only
_FIRST_CORPUS = "documentation"  # a format-1 file's only corpus

# feeds -> the requested outputs, by name (an ONNX Runtime session's or a Runner's run, bound to names).
Forward = Callable[[Sequence[str], dict[str, np.ndarray]], list[np.ndarray]]


# -- what is compared ------------------------------------------------------------------------------------------


def selection(name: str, value: np.ndarray, attention_mask: np.ndarray, short_rows: int) -> np.ndarray:
    """The part of output ``name`` that is stored and compared: ``pooler_output`` whole (batch, H); otherwise the
    real tokens (tokens, H) of the first ``short_rows`` rows, or of every row for ``last_hidden_state``."""
    if name == interface.POOLER_OUTPUT:
        return value
    keep = attention_mask.astype(bool).copy()
    if name != interface.LAST_HIDDEN_STATE:
        keep[short_rows:] = False
    return value[keep]


def real_tokens(outputs: Mapping[str, np.ndarray], attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """Every real token of every output (``pooler_output``: every row): what the export's gates compare."""
    rows = attention_mask.shape[0]
    return {name: selection(name, value, attention_mask, short_rows=rows) for name, value in outputs.items()}


def max_abs_diffs(expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Max abs difference per output between same-shaped selections, in float64."""
    return {
        name: float(np.abs(actual[name].astype(np.float64) - ref.astype(np.float64)).max())
        for name, ref in expected.items()
    }


def max_abs_checks(
    expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], tolerance: float = interface.FP32_TOLERANCE
) -> tuple[Check, ...]:
    """:func:`max_abs_diffs`, each against ``tolerance``."""
    return tuple(
        Check(f"{name} max abs diff", diff, tolerance) for name, diff in max_abs_diffs(expected, actual).items()
    )


def cosine_checks(
    expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], limit: float
) -> tuple[Check, ...]:
    """Minimum per-token (``pooler_output``: per-row) cosine of each output to the reference, in float64."""
    checks = []
    for name, ref in expected.items():
        ref64, out = ref.astype(np.float64), actual[name].astype(np.float64)
        norms = np.linalg.norm(ref64, axis=-1) * np.linalg.norm(out, axis=-1) + 1e-12
        cosine = np.sum(ref64 * out, axis=-1) / norms
        checks.append(Check(f"{name} min cosine", float(cosine.min()), limit, at_least=True))
    return tuple(checks)


_MEAN_NORMALIZED = EmbedRecipe(pooling="mean", normalize=True).pooling_for(num_layers=1)  # the int8 gate's vectors


def sentence_embeddings(texts: Sequence[str], tokenizer: Tokenizer, forward: Forward, max_length: int) -> np.ndarray:
    """Mean-pooled, normalized float32 embeddings of ``texts`` in input order, batched exactly as
    ``Encoder.embed`` batches them (:func:`bert_onnx.runtime.batching.tokenized_batches`, default budgets)."""
    result: np.ndarray | None = None
    for rows, batch in tokenized_batches(tokenizer, texts, max_length):
        hidden = forward([interface.LAST_HIDDEN_STATE], batch.feeds())[0]
        pooled = _MEAN_NORMALIZED({interface.LAST_HIDDEN_STATE: hidden}, batch.attention_mask)
        if result is None:
            result = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
        result[rows] = pooled
    if result is None:
        raise InvalidValueError("no texts to embed")
    return result


def batch_invariance(texts: Sequence[str], tokenizer: Tokenizer, forward: Forward, max_length: int) -> float:
    """Largest abs difference between a text's normalized embedding computed alone and computed in company: in
    its length-sorted batches, and in one batch beside a ``max_length``-token text."""
    long_text = _LONG_TEXT * (max_length // 4)
    alone = np.concatenate([sentence_embeddings([text], tokenizer, forward, max_length) for text in texts])
    batched = sentence_embeddings(texts, tokenizer, forward, max_length)
    batch = tokenizer([*texts, long_text], max_length=max_length)  # one batch, every row padded to max_length
    hidden = forward([interface.LAST_HIDDEN_STATE], batch.feeds())[0]
    beside_long = _MEAN_NORMALIZED({interface.LAST_HIDDEN_STATE: hidden}, batch.attention_mask)[: len(texts)]
    return float(max(np.abs(alone - batched).max(), np.abs(alone - beside_long).max()))


def embedding_quality(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> dict[str, float]:
    """Cosine of each candidate embedding to its reference, and how many of each text's k nearest neighbours
    (by cosine, excluding itself) the candidate keeps. Both are normalized; compared in float64."""
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    cosines = np.sum(reference * candidate, axis=1)

    def neighbours(vectors: np.ndarray) -> np.ndarray:
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1)[:, :k]

    ref_nn, cand_nn = neighbours(reference), neighbours(candidate)
    agreement = np.mean([len(set(a) & set(b)) / k for a, b in zip(ref_nn, cand_nn, strict=True)])
    return {
        "mean cosine": float(cosines.mean()),
        "min cosine": float(cosines.min()),
        "top-10 agreement": float(agreement),
    }


def int8_checks(
    corpora: Sequence[Corpus], tokenizer: Tokenizer, forward: Forward, max_length: int
) -> tuple[Check, ...]:
    """The embeddings gate: embedding quality against the reference on every corpus, each check named by its corpus,
    and batch invariance on the first texts of each."""
    checks: list[Check] = []
    invariance = 0.0
    for corpus in corpora:
        if corpus.embeddings is None:
            raise ModelFolderError(f"gates.npz has no reference sentence embeddings of the {corpus.name} texts")
        candidate = sentence_embeddings(corpus.texts, tokenizer, forward, max_length)
        quality = embedding_quality(corpus.embeddings, candidate)
        checks += [Check(f"{corpus.name}: {k}", quality[k], limit, at_least=True) for k, limit in INT8_GATE.items()]
        invariance = max(invariance, batch_invariance(corpus.texts[:INVARIANCE_TEXTS], tokenizer, forward, max_length))
    return (*checks, Check(BATCH_INVARIANCE_CHECK, invariance, INT8_BATCH_TOLERANCE))


# -- the stored references --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """One corpus of the embeddings gate: its name, its real texts and PyTorch's mean-pooled normalized embeddings
    of them (only when the folder has a choice with that gate)."""

    name: str
    texts: tuple[str, ...]
    embeddings: np.ndarray | None = None


@dataclass(frozen=True)
class References:
    """PyTorch fp32's outputs for the gates, as stored in ``gates.npz``.

    ``batch``: the parity batch's int64 inputs by name; ``outputs``: PyTorch's outputs on it, each the
    :func:`selection` of that output; ``corpora``: the embeddings gate's texts, documentation paragraphs first.
    """

    batch: dict[str, np.ndarray]
    short_rows: int
    outputs: dict[str, np.ndarray]
    corpora: tuple[Corpus, ...]

    @property
    def texts(self) -> tuple[str, ...]:
        """The first corpus's texts (real documentation paragraphs): what ``tune`` times."""
        return self.corpora[0].texts

    @property
    def has_embeddings(self) -> bool:
        return all(c.embeddings is not None for c in self.corpora)

    @classmethod
    def from_outputs(
        cls,
        batch: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        short_rows: int,
        corpora: Sequence[Corpus],
    ) -> References:
        """Keep the :func:`selection` of each of PyTorch's full outputs on ``batch``."""
        mask = batch["attention_mask"]
        return cls(
            batch={name: np.asarray(batch[name], dtype=np.int64) for name in interface.INPUT_NAMES if name in batch},
            short_rows=short_rows,
            outputs={
                name: selection(name, value, mask, short_rows).astype(np.float32) for name, value in outputs.items()
            },
            corpora=tuple(
                Corpus(c.name, tuple(c.texts), None if c.embeddings is None else np.asarray(c.embeddings, np.float32))
                for c in corpora
            ),
        )

    def select(self, actual: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The same selection of a candidate's full outputs on :attr:`batch`."""
        mask = self.batch["attention_mask"]
        return {name: selection(name, actual[name], mask, self.short_rows) for name in self.outputs}

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "format": np.array(_FORMAT),
            "short_rows": np.array(self.short_rows),
            "corpora": np.array([c.name for c in self.corpora], dtype=np.str_),
        }
        for corpus in self.corpora:
            encoded = [text.encode("utf-8") for text in corpus.texts]
            arrays[f"corpus/{corpus.name}/text_bytes"] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
            arrays[f"corpus/{corpus.name}/text_offsets"] = np.cumsum([0, *(len(e) for e in encoded)]).astype(np.int64)
            if corpus.embeddings is not None:
                arrays[f"corpus/{corpus.name}/embeddings"] = corpus.embeddings
        arrays.update({f"batch/{name}": value for name, value in self.batch.items()})
        arrays.update({f"output/{name}": value for name, value in self.outputs.items()})

        def write(handle: Any) -> None:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
            handle.write(buffer.getvalue())

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> References:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise ModelFolderError(f"{path}: not a readable gate-reference file ({exc})") from exc
        version = int(arrays.get("format", -1))
        if version not in (1, _FORMAT):
            raise ModelFolderError(f"{path}: gate-reference format {arrays.get('format')!r} is not 1 or {_FORMAT}")
        if version == 1:  # one corpus, its arrays at the top level
            prefixes = {_FIRST_CORPUS: ""}
        else:
            prefixes = {str(name): f"corpus/{name}/" for name in arrays["corpora"].tolist()}

        def texts(prefix: str) -> tuple[str, ...]:
            offsets, data_bytes = arrays[f"{prefix}text_offsets"], arrays[f"{prefix}text_bytes"].tobytes()
            return tuple(data_bytes[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets.tolist()))

        return cls(
            batch={name: arrays[f"batch/{name}"] for name in interface.INPUT_NAMES if f"batch/{name}" in arrays},
            short_rows=int(arrays["short_rows"]),
            outputs={key.removeprefix("output/"): value for key, value in arrays.items() if key.startswith("output/")},
            corpora=tuple(
                Corpus(name, texts(prefix), arrays.get(f"{prefix}embeddings")) for name, prefix in prefixes.items()
            ),
        )


# -- one gate per choice ----------------------------------------------------------------------------------------


def gate_description(gate: Gate, references: References, max_length: int) -> str:
    """What ``gate`` measures, in words, for the tables export, ``verify`` and ``tune`` print."""
    ids = references.batch["input_ids"]
    batch = f"the parity batch, {ids.shape[0]} rows of up to {ids.shape[1]} tokens"
    if gate.kind == choices.EMBEDDINGS:
        texts = " and ".join(f"{len(c.texts)} real {c.name} texts" for c in references.corpora)
        return (
            f"mean-pooled normalized sentence embeddings of {texts}, batched as Encoder.embed batches, against "
            f"PyTorch fp32; batch invariance on {INVARIANCE_TEXTS} of each alone vs batched and beside a "
            f"{max_length}-token text"
        )
    if gate.kind == choices.TOKEN_COSINE:
        return f"per-token cosine to PyTorch fp32 on {batch}"
    return f"max abs diff to PyTorch fp32 on {batch}"


def describe(choice: Choice, references: References, max_length: int) -> str:
    """:func:`gate_description` of ``choice``'s gate, naming the backend where it is not ONNX Runtime."""
    described = gate_description(choice.gate, references, max_length)
    return described if choice.backend == choices.ONNXRUNTIME else f"{choice.title}: {described}"


def measure(
    gate: Gate, references: References, forward: Forward, tokenizer: Tokenizer, max_length: int
) -> tuple[Check, ...]:
    """Measure ``gate`` (a :class:`~bert_onnx.choices.Choice`'s) on ``forward`` against ``references``: at export
    against PyTorch's outputs of the moment, in ``verify`` and ``tune`` against the stored ones."""
    if gate.kind == choices.EMBEDDINGS:
        if not references.has_embeddings:
            raise ModelFolderError("gates.npz has no reference sentence embeddings (the folder has no int8 graph)")
        return int8_checks(references.corpora, tokenizer, forward, max_length)
    names = list(references.outputs)
    actual = references.select(dict(zip(names, forward(names, dict(references.batch)), strict=True)))
    assert gate.limit is not None  # Gate checks it for every kind but EMBEDDINGS
    if gate.kind == choices.TOKEN_COSINE:
        return cosine_checks(references.outputs, actual, gate.limit)
    return max_abs_checks(references.outputs, actual, gate.limit)
