"""``Encoder``: load an exported folder and run it: texts or ids in, the model's outputs or pooled embeddings out."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bert_onnx import interface, machine
from bert_onnx.errors import InvalidTypeError, InvalidValueError
from bert_onnx.families import ModelFamily
from bert_onnx.manifest import Manifest, ModelFolderError
from bert_onnx.runtime import profile
from bert_onnx.runtime.batching import tokenized_batches
from bert_onnx.runtime.graph_check import check_domains
from bert_onnx.runtime.inputs import check_model_inputs, check_texts
from bert_onnx.runtime.pooling import Pooling
from bert_onnx.runtime.profile import choice_options
from bert_onnx.runtime.recipe import EmbedRecipe
from bert_onnx.runtime.runners import BACKENDS, OnnxRuntimeRunner, Runner, check_options
from bert_onnx.runtime.session import DEVICES, default_cache_dir
from bert_onnx.runtime.tokenizer import Padding, TokenizedBatch, Tokenizer

EMBED_WINDOW = 8192  # texts tokenized and length-sorted together by ``embed``


@dataclass(frozen=True)
class EncoderOutput:
    """The model's outputs as NumPy arrays, named and shaped like transformers' ``BaseModelOutputWithPooling``.

    ``last_hidden_state``: (batch, sequence, hidden); ``pooler_output``: (batch, hidden), ``None`` for a family
    without a pooler (DistilBERT, ELECTRA, DeBERTa, ModernBERT); ``hidden_states``: a tuple of N + 1 arrays
    (batch, sequence, hidden), the embeddings first, or ``None`` when not requested. The inputs that produced them
    ride along so padded positions can be masked (``token_type_ids``: ``None`` where the graph takes none).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray | None
    last_hidden_state: np.ndarray
    pooler_output: np.ndarray | None
    hidden_states: tuple[np.ndarray, ...] | None


def int8_clips_here(manifest: Manifest) -> str | None:
    """Why a folder's int8 graph computes differently on this CPU than where its gate was measured, if it does:
    signed int8 weights on a CPU without VNNI, whose kernels add products in saturating int16."""
    if "int8" not in manifest.variants or manifest.extra.get("int8_weights", "s8") != "s8":
        return None
    if machine.has_vnni():
        return None
    return (
        "its weights are signed (exported on a CPU with VNNI) and this CPU has no VNNI, so ONNX Runtime's int8 "
        "kernels clip large products here; re-export on this machine for an int8 graph that is exact on it"
    )


class Encoder:
    """A model folder written by ``bert-onnx export`` (BERT or another family, :mod:`bert_onnx.families`), run under
    ONNX Runtime.

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
        if device not in DEVICES:
            raise InvalidValueError(f"device={device!r} is not one of {', '.join(DEVICES)}")
        if backend is not None and backend not in BACKENDS:
            raise InvalidValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelFolderError(f"{self.model_dir}: not a folder (expected the output of `bert-onnx export`)")
        self.manifest = Manifest.read(self.model_dir)
        if variant is not None or precision is not None:
            backend = backend or "onnxruntime"
            self.picked_by = "asked for"
        else:
            wanted = backend
            pick = profile.lookup(
                self.manifest, device, threads, lambda name: wanted in (None, choice_options(name)["backend"])
            )
            options = choice_options(pick.name or ("openvino-fp32" if backend == "openvino" else "fp32"))
            backend, variant, precision = options["backend"], options["variant"], options["precision"]
            self.picked_by = pick.reason
        assert backend is not None
        variant = check_options(backend, device, variant, io_binding, precision)
        self.backend = backend
        self.threads = threads
        self.variant = self._choose_variant(variant, device)
        model_file = self.manifest.variants[self.variant].file
        if verify:
            self.manifest.verify_files(self.model_dir, [model_file, interface.TOKENIZER_FILE, interface.CONFIG_FILE])
        self.device = device
        self.tokenizer = Tokenizer.from_file(
            self.model_dir / interface.TOKENIZER_FILE,
            pad_token_id=self.manifest.pad_token_id,
            input_names=self.manifest.input_names,
        )
        cache_dir = default_cache_dir() if session_cache is True else Path(session_cache) if session_cache else None
        check_domains(self.model_dir / model_file)
        self.precision: str | None = None
        self.runner: Runner
        if backend == "openvino":
            from bert_onnx.runtime import openvino_backend

            self.precision = precision or "fp32"
            # The runner checks the precision (name, CPU support, what OpenVINO compiled) before the gate lookup.
            self.runner = openvino_backend.OpenVINOSession(
                self.model_dir / model_file, self.precision, threads, cache_dir
            )
            gate = interface.OPENVINO_VARIANTS[self.precision]
            if gate not in self.manifest.variants and not self.picked_by.startswith(profile.TUNED):
                warnings.warn(
                    f"bert-onnx: OpenVINO {self.precision} was not validated for {self.model_dir} at export; "
                    f"export with --variants fp32,{gate} to check it against PyTorch and record its gate",
                    stacklevel=2,
                )
        else:
            self.runner = OnnxRuntimeRunner(
                self.model_dir / model_file,
                device=device,
                threads=threads,
                io_binding=io_binding,
                cache_dir=cache_dir if verify else None,
                model_sha256=self.manifest.files[model_file],
            )
        self.io_binding = isinstance(self.runner, OnnxRuntimeRunner) and self.runner.io_binding
        manifest = self.manifest
        if self.runner.output_names != manifest.output_names or self.runner.input_names != manifest.input_names:
            raise ModelFolderError(
                f"{self.model_dir / model_file}: graph inputs {list(self.runner.input_names)} / outputs "
                f"{list(self.runner.output_names)} do not match {interface.MANIFEST_FILE}"
            )

    def _choose_variant(self, variant: str | None, device: str) -> str:
        stored = self.manifest.variants
        clipped = int8_clips_here(self.manifest)
        if variant is None:  # OpenVINO: it compiles model.onnx
            return "fp32"
        if variant in interface.OPENVINO_VARIANTS.values():
            precision = variant.removeprefix("openvino-")
            raise InvalidValueError(
                f"variant={variant!r} is the gate of OpenVINO running model.onnx; "
                f"use backend='openvino', precision={precision!r}"
            )
        if variant not in interface.VARIANTS:
            raise InvalidValueError(f"variant={variant!r} is not one of {', '.join(interface.VARIANTS)}")
        if variant not in stored:
            raise InvalidValueError(
                f"variant={variant!r} is not in {self.model_dir} (it has {', '.join(stored)}); "
                f"export it with --variants {variant}"
            )
        if device not in stored[variant].devices:
            raise InvalidValueError(
                f"variant={variant!r} runs on {', '.join(stored[variant].devices)}, not device={device!r}"
            )
        if variant == "int8" and clipped:
            warnings.warn(f"bert-onnx: int8's export gate does not hold here: {clipped}", stacklevel=3)
        return variant

    @property
    def choice(self) -> str:
        """What runs, as ``bert-onnx tune`` names it: "fp32", "opt", "int8", "fp16", "openvino-fp32" or
        "openvino-bf16"."""
        return profile.choice_of(self.backend, self.variant, self.precision)

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
    def family(self) -> ModelFamily:
        """The model family (:mod:`bert_onnx.families`): its graph inputs, whether it has a pooler."""
        return self.manifest.model_family

    def pooling_for(self, recipe: EmbedRecipe) -> Pooling:
        """``recipe``'s pooling step for this model; refuses layers it does not have, and ``pooling="pooler"``
        for a family without a pooler."""
        if recipe.pooling == "pooler" and not self.family.pooler:
            raise InvalidValueError(
                f"pooling='pooler' reads pooler_output, and {self.family.model_type} models have no pooler "
                f"({self.model_dir} has no pooler_output); use pooling='cls' or 'mean'"
            )
        return recipe.pooling_for(self.num_layers)

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
        pooled = (interface.POOLER_OUTPUT,) if self.family.pooler else ()
        names = self.manifest.output_names if output_hidden_states else (interface.LAST_HIDDEN_STATE, *pooled)
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
            pooler_output=out.get(interface.POOLER_OUTPUT),
            hidden_states=hidden,
        )

    def run(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        output_hidden_states: bool = True,
    ) -> EncoderOutput:
        """Run pre-tokenized input: 2-d integer arrays (batch, sequence), like calling the transformers model directly.

        A missing ``attention_mask`` means every position is attended; missing ``token_type_ids`` means segment 0.
        A family whose model takes no segment ids (DistilBERT, MPNet, ModernBERT) refuses ``token_type_ids``.
        Raises ``ValueError`` for non-2-d or non-integer arrays, mismatched shapes, or ids out of range.
        """
        ids, mask, types = check_model_inputs(
            input_ids,
            attention_mask,
            token_type_ids,
            vocab_size=self.manifest.vocab_size,
            type_vocab_size=self.manifest.type_vocab_size,
            max_length=self.max_length,
            input_names=self.manifest.input_names,
            family=self.family,
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
        pooling = self.pooling_for(recipe)
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
