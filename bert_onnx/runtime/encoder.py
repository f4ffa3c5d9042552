"""``Encoder``: load an exported folder and run it: texts or ids in, BERT outputs or pooled embeddings out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bert_onnx import choices, interface, machine
from bert_onnx._checks import check_choice
from bert_onnx.choices import Choice
from bert_onnx.errors import InvalidTypeError, InvalidValueError
from bert_onnx.manifest import Manifest, ModelFolderError
from bert_onnx.runtime import backends
from bert_onnx.runtime.batching import tokenized_batches
from bert_onnx.runtime.graph_check import check_domains
from bert_onnx.runtime.inputs import check_model_inputs, check_texts
from bert_onnx.runtime.recipe import EmbedRecipe
from bert_onnx.runtime.runners import OnnxRuntimeRunner, Runner
from bert_onnx.runtime.session import DEVICES, default_cache_dir
from bert_onnx.runtime.tokenizer import Padding, TokenizedBatch, Tokenizer

EMBED_WINDOW = 8192  # texts tokenized and length-sorted together by ``embed``


@dataclass(frozen=True)
class EncoderOutput:
    """BERT outputs as NumPy arrays, named and shaped like transformers' ``BaseModelOutputWithPooling``.

    ``last_hidden_state``: (batch, sequence, hidden); ``pooler_output``: (batch, hidden); ``hidden_states``: a tuple
    of N + 1 arrays (batch, sequence, hidden), the embeddings first, or ``None`` when not requested. The inputs
    that produced them ride along so padded positions can be masked.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    last_hidden_state: np.ndarray
    pooler_output: np.ndarray
    hidden_states: tuple[np.ndarray, ...] | None


class Encoder:
    """A BERT model folder written by ``bert-onnx export``, run under ONNX Runtime.

    Loading verifies the SHA-256 of every file it uses against ``manifest.json`` (``verify=False`` skips it) and
    creates one session on ``device`` ("cpu" or "cuda"; CUDA never falls back to CPU silently). ``threads`` sets
    ONNX Runtime's intra-op threads (default: its own choice, one per physical core).

    ``session_cache``: keep ONNX Runtime's rewritten graph on disk so later loads start from it: ``True`` for
    ``$BERT_ONNX_SESSION_CACHE`` or ``~/.cache/bert-onnx/sessions``, or a folder. Off by default: with ONNX
    Runtime 1.32 the rewriting takes a small part of a load (bert-base: 0.40 s to create a session from
    ``model.onnx``, 0.35 s from the saved graph), less than hashing the cached file costs. Entries are keyed by the
    model file's verified SHA-256, so the cache is used only with ``verify=True``.

    ``io_binding``: run through ONNX Runtime's IO binding, with outputs allocated on the device and only the
    requested ones copied to host memory. The default is on for CUDA, off for CPU (where it gains nothing).

    ``variant`` picks the graph: "fp32", "opt", "int8" (CPU) or "fp16" (CUDA), among those the folder holds (see
    ``bert-onnx info``); every stored variant passed its accuracy gate at export. ``backend="openvino"`` (extra
    ``[openvino]``) compiles ``model.onnx`` with OpenVINO on the CPU instead, at ``precision`` "fp32" or "bf16"
    (bf16 on a CPU without bf16 units raises ``BackendError``). Same inputs, outputs, checks and threading.

    Not told which, it runs what was measured fastest here: the choice ``bert-onnx tune DIR`` found fastest among
    those that passed their gates on this machine (:mod:`bert_onnx.runtime.profile`), within ``backend`` if given.
    Without such a profile it runs fp32, the exact one: which choice is faster depends on the CPU, and a probe at
    every load would cost more than it saves (docs/variants.md). :meth:`describe` says what was picked and why.
    An int8 graph with signed weights on a CPU without VNNI, where ONNX Runtime's int8 kernels clip its products,
    runs only when asked for, with a warning.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        verify: bool = True,
        variant: str | None = None,
        session_cache: bool | str | Path = False,
        io_binding: bool | None = None,
        backend: str | None = None,
        precision: str | None = None,
    ) -> None:
        if not isinstance(session_cache, (bool, str, Path)):
            raise InvalidTypeError(f"session_cache={session_cache!r} must be True, False or a folder path")
        if io_binding is not None and not isinstance(io_binding, bool):
            raise InvalidTypeError(f"io_binding={io_binding!r} must be True, False or None")
        check_choice("device", device, tuple(DEVICES))
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelFolderError(f"{self.model_dir}: not a folder (expected the output of `bert-onnx export`)")
        self.manifest = Manifest.read(self.model_dir)
        resolved = backends.resolve(self.manifest, device, threads, variant, backend, precision)
        runs = backends.backend_of(resolved.choice)
        runs.check_options(device, io_binding)
        backends.check_runnable(self.manifest, self.model_dir, resolved, device)
        self.choice_spec: Choice = resolved.choice
        self.pick = resolved.pick
        self.device, self.threads = device, threads
        model_file = self.choice_spec.file
        if verify:
            used = [*self.choice_spec.all_files, interface.TOKENIZER_FILE, interface.CONFIG_FILE]
            self.manifest.verify_files(self.model_dir, used)
        self.tokenizer = Tokenizer.from_file(
            self.model_dir / interface.TOKENIZER_FILE, pad_token_id=self.manifest.pad_token_id
        )
        if model_file.endswith(".onnx"):  # an OpenVINO IR declares no ONNX domains (and loads no libraries)
            check_domains(self.model_dir / model_file)
        cache_dir = default_cache_dir() if session_cache is True else Path(session_cache) if session_cache else None
        opening = backends.Opening(
            self.model_dir / model_file,
            device,
            threads,
            io_binding,
            cache_dir if verify or self.choice_spec.backend != "onnxruntime" else None,
            self.manifest.files[model_file],
        )
        self.runner: Runner = runs.open(self.choice_spec, opening)
        backends.warn_unvouched(self.manifest, self.model_dir, resolved)
        self.io_binding = isinstance(self.runner, OnnxRuntimeRunner) and self.runner.io_binding
        if self.runner.output_names != self.manifest.output_names or self.runner.input_names != interface.INPUT_NAMES:
            raise ModelFolderError(
                f"{self.model_dir / model_file}: graph inputs {list(self.runner.input_names)} / outputs "
                f"{list(self.runner.output_names)} do not match {interface.MANIFEST_FILE}"
            )

    @property
    def choice(self) -> str:
        """What runs, as the registry (:mod:`bert_onnx.choices`) and ``bert-onnx tune`` name it."""
        return self.choice_spec.name

    @property
    def backend(self) -> str:
        return self.choice_spec.backend

    @property
    def variant(self) -> str | None:
        """The stored graph's name (``Encoder(variant=...)``); for a backend compiling ``model.onnx``, "fp32"."""
        return self.choice_spec.variant or next(
            (c.variant for c in choices.CHOICES.values() if c.variant and c.file == self.choice_spec.file), None
        )

    @property
    def precision(self) -> str | None:
        """The precision a compiling backend was asked for (``None`` under ONNX Runtime: the graph decides)."""
        return None if self.choice_spec.backend == "onnxruntime" else self.choice_spec.precision

    @property
    def picked_by(self) -> str:
        """Why this choice runs: "asked for", the tuned profile's pick, or the default and why."""
        return self.pick.reason

    def describe(self) -> dict[str, Any]:
        """What runs here and why: the folder, device, backend, variant, precision, threads, the tuned-profile
        decision (``picked_by``), and this CPU."""
        return {
            "model_dir": str(self.model_dir),
            "device": self.device,
            "choice": self.choice,
            "backend": self.backend,
            "variant": self.variant,
            "precision": self.precision,
            "threads": self.threads,
            "picked_by": self.picked_by,
            **machine.describe(),
        }

    @property
    def num_layers(self) -> int:
        return self.manifest.num_layers

    @property
    def hidden_size(self) -> int:
        return self.manifest.hidden_size

    @property
    def max_length(self) -> int:
        """The most tokens one text may have (the model's position embeddings)."""
        return self.manifest.max_length

    def __repr__(self) -> str:
        backend = f", backend='openvino', precision={self.precision!r}" if self.backend == "openvino" else ""
        return (
            f"Encoder({str(self.model_dir)!r}, device={self.device!r}, variant={self.variant!r}{backend}, "
            f"layers={self.num_layers}, hidden={self.hidden_size})"
        )

    # -- running ---------------------------------------------------------------------------------------------

    def _forward(self, batch: TokenizedBatch, names: Sequence[str]) -> dict[str, np.ndarray]:
        feeds = batch.feeds()
        if batch.input_ids.shape[0] == 0:
            return {name: self._empty(name, batch.input_ids.shape[1]) for name in names}
        return dict(zip(names, self.runner.run(list(names), feeds), strict=True))

    def _empty(self, name: str, sequence: int) -> np.ndarray:
        shape = (0, self.hidden_size) if name == interface.POOLER_OUTPUT else (0, sequence, self.hidden_size)
        return np.zeros(shape, dtype=np.float32)

    def _output(self, batch: TokenizedBatch, output_hidden_states: bool) -> EncoderOutput:
        names = (
            self.manifest.output_names
            if output_hidden_states
            else (interface.LAST_HIDDEN_STATE, interface.POOLER_OUTPUT)
        )
        out = self._forward(batch, names)
        hidden = (
            tuple(out[interface.hidden_state_name(i)] for i in range(self.num_layers + 1))
            if output_hidden_states
            else None
        )
        return EncoderOutput(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            token_type_ids=batch.token_type_ids,
            last_hidden_state=out[interface.LAST_HIDDEN_STATE],
            pooler_output=out[interface.POOLER_OUTPUT],
            hidden_states=hidden,
        )

    def run(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        output_hidden_states: bool = True,
    ) -> EncoderOutput:
        """Run pre-tokenized input: 2-d integer arrays (batch, sequence), like calling ``BertModel`` directly.

        A missing ``attention_mask`` means every position is attended; missing ``token_type_ids`` means segment 0.
        Raises ``ValueError`` for non-2-d or non-integer arrays, mismatched shapes, or ids out of range.
        """
        ids, mask, types = check_model_inputs(
            input_ids,
            attention_mask,
            token_type_ids,
            vocab_size=self.manifest.vocab_size,
            type_vocab_size=self.manifest.type_vocab_size,
            max_length=self.max_length,
        )
        return self._output(TokenizedBatch(ids, mask, types), output_hidden_states)

    def _check_max_length(self, max_length: int | None) -> int:
        if max_length is None:
            return self.max_length
        if not isinstance(max_length, int) or isinstance(max_length, bool) or not 2 <= max_length <= self.max_length:
            raise InvalidValueError(f"max_length={max_length!r} must be an int in [2, {self.max_length}]")
        return max_length

    def encode(
        self,
        texts: str | Sequence[str],
        max_length: int | None = None,
        padding: Padding = "longest",
        truncation: bool = True,
        output_hidden_states: bool = True,
    ) -> EncoderOutput:
        """Tokenize ``texts`` and run them as one batch.

        ``padding="longest"`` pads to the longest text; ``"max_length"`` pads every row to ``max_length``.
        Texts over ``max_length`` tokens are truncated (keeping the final [SEP]); ``truncation=False`` raises
        ``ValueError`` instead. ``max_length`` defaults to the model's limit (``self.max_length``, 512 for BERT).
        """
        max_length = self._check_max_length(max_length)
        batch = self.tokenizer(check_texts(texts), max_length=max_length, padding=padding, truncation=truncation)
        return self._output(batch, output_hidden_states)

    def embed(
        self,
        texts: str | Sequence[str],
        pooling: str = "cls",
        layers: int | Sequence[int] | None = None,
        combine: str = "concat",
        normalize: bool = False,
        batch_size: int = 32,
        max_length: int | None = None,
        truncation: bool = True,
        progress: Callable[[int], object] | None = None,
        max_tokens: int = 8192,
    ) -> np.ndarray:
        """One float32 vector per text, shape ``(len(texts), dim)``, in input order.

        The keywords are an :class:`~bert_onnx.runtime.recipe.EmbedRecipe`'s fields: ``pooling`` "cls", "pooler"
        (``pooler_output``) or "mean"; ``layers`` pools hidden states instead of ``last_hidden_state`` (e.g.
        ``[-4, -3, -2, -1]``) and ``combine`` joins them, "concat" (dim = hidden * len(layers)) or "mean";
        ``normalize`` scales each vector to unit length. See :meth:`embed_recipe`.
        """
        recipe = EmbedRecipe(
            pooling=pooling,
            layers=layers,  # type: ignore[arg-type]  # EmbedRecipe normalizes an int or a sequence to a tuple
            combine=combine,
            normalize=normalize,
            max_length=max_length,
            truncation=truncation,
            batch_size=batch_size,
            max_tokens=max_tokens,
        )
        return self.embed_recipe(texts, recipe, progress)

    def embed_recipe(
        self, texts: str | Sequence[str], recipe: EmbedRecipe, progress: Callable[[int], object] | None = None
    ) -> np.ndarray:
        """Embed ``texts`` by ``recipe``: shape ``(len(texts), recipe.dim(hidden_size))``, in input order.

        Texts are sorted by length into batches of at most ``recipe.batch_size`` texts and ``recipe.max_tokens``
        padded tokens (:mod:`bert_onnx.runtime.batching`), each padded only to its own longest text, and only the
        outputs the recipe needs are fetched. A text's vector does not depend on its batch. ``progress(n)`` is
        called after each batch with the number of texts it finished.
        """
        if not isinstance(recipe, EmbedRecipe):
            raise InvalidTypeError(f"recipe={recipe!r} must be an EmbedRecipe")
        pooling = recipe.pooling_for(self.num_layers)
        batch = check_texts(texts)
        max_length = self._check_max_length(recipe.max_length)
        if recipe.max_tokens < max_length:
            raise InvalidValueError(f"max_tokens={recipe.max_tokens!r} must be an int >= max_length ({max_length})")
        result = np.empty((len(batch), recipe.dim(self.hidden_size)), dtype=np.float32)
        # Tokenized a window at a time, so memory beyond ``result`` stays bounded whatever the number of texts.
        for offset in range(0, len(batch), EMBED_WINDOW):
            window = batch[offset : offset + EMBED_WINDOW]
            batches = tokenized_batches(
                self.tokenizer,
                window,
                max_length,
                recipe.truncation,
                recipe.batch_size,
                recipe.max_tokens,
                first_index=offset,
            )
            for rows, tokens in batches:
                outputs = self._forward(tokens, pooling.fetch)
                result[[offset + i for i in rows]] = pooling(outputs, tokens.attention_mask)
                if progress is not None:
                    progress(len(rows))
        return result
