"""``Encoder``: load an exported folder and run it: texts or ids in, the model's outputs or pooled embeddings out."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bert_onnx import choices, interface, machine
from bert_onnx._checks import check_choice
from bert_onnx.choices import Choice
from bert_onnx.errors import InvalidTypeError, InvalidValueError
from bert_onnx.families import ModelFamily
from bert_onnx.manifest import Manifest, ModelFolderError
from bert_onnx.runtime import backends
from bert_onnx.runtime.batching import tokenized_batches
from bert_onnx.runtime.graph_check import check_domains
from bert_onnx.runtime.inputs import check_model_inputs, check_texts
from bert_onnx.runtime.pooling import POOLER, DenseLayer, Pooling
from bert_onnx.runtime.recipe import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_TOKENS,
    Batching,
    EmbedRecipe,
    folder_recipe,
    recipe_for,
)
from bert_onnx.runtime.runners import OnnxRuntimeRunner, Runner
from bert_onnx.runtime.session import DEVICES, default_cache_dir
from bert_onnx.runtime.tokenizer import Padding, TokenIds, TokenizedBatch, Tokenizer

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


class Encoder:
    """A model folder written by ``bert-onnx export`` (BERT or another family, :mod:`bert_onnx.families`), run under
    ONNX Runtime.

    Loading verifies the SHA-256 of every file it uses against ``manifest.json`` (``verify=False`` skips it) and
    creates one session on ``device`` ("cpu" or "cuda"; CUDA never falls back to CPU silently). ``threads`` sets
    the backend's intra-op threads (default: its own choice, one per physical core): an int from 1 to 4 per CPU this
    process may use (:func:`bert_onnx.machine.check_threads`), checked the same for every backend.

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
    those that passed their gates on this machine (:mod:`bert_onnx.runtime.profile`), within ``backend`` if given
    and among those whose backend takes the options given (``io_binding=True``: ONNX Runtime's; ``picked_by`` names
    a faster choice passed over, and why). Without such a profile it runs fp32, the exact one: which choice is
    faster depends on the CPU, and a probe at every load would cost more than it saves (docs/variants.md).
    :meth:`describe` says what was picked and why.
    An int8 graph with signed 8-bit (s8) weights on a CPU without VNNI, where ONNX Runtime's int8 kernels clip its
    products, runs only when asked for, with a warning.
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
        threads = machine.check_threads(threads)  # one rule for every backend, before one is picked
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelFolderError(f"{self.model_dir}: not a folder (expected the output of `bert-onnx export`)")
        self.manifest = Manifest.read(self.model_dir)
        resolved = backends.resolve(self.manifest, device, threads, variant, backend, precision, io_binding)
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
            self.model_dir / interface.TOKENIZER_FILE,
            pad_token_id=self.manifest.pad_token_id,
            input_names=self.manifest.input_names,
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
        manifest = self.manifest
        if self.runner.output_names != manifest.output_names or self.runner.input_names != manifest.input_names:
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
        decision (``picked_by``), the folder's recipe (what ``embed`` does by default, and where it came from) and
        its prompts, and this CPU."""
        record = self.manifest.recipe
        return {
            "model_dir": str(self.model_dir),
            "device": self.device,
            "choice": self.choice,
            "backend": self.backend,
            "variant": self.variant,
            "precision": self.precision,
            "threads": self.threads,
            "picked_by": self.picked_by,
            "recipe": record.summary(),
            "recipe_origin": record.origin if record.understood else f"{record.origin} (not understood)",
            "default_recipe": self.default_recipe.to_dict() if record.understood else None,
            "prompts": dict(record.prompts),
            "default_prompt_name": record.default_prompt_name,
            "similarity_fn_name": record.similarity_fn_name,
            **machine.describe(),
        }

    @property
    def num_layers(self) -> int:
        return self.manifest.num_layers

    @property
    def family(self) -> ModelFamily:
        """The model family (:mod:`bert_onnx.families`): its graph inputs, whether it has a pooler."""
        return self.manifest.model_family

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

    # -- vectors ---------------------------------------------------------------------------------------------

    @property
    def default_recipe(self) -> EmbedRecipe:
        """The recipe this folder carries (read from its sentence-transformers files at export), or
        ``EmbedRecipe()`` when it has none; raises ``RecipeNotUnderstoodError`` when its recipe was not understood.
        ``describe()["recipe"]`` and ``bert-onnx info`` say which and where it came from."""
        return folder_recipe(self.manifest.recipe, str(self.model_dir))

    def resolve_recipe(self, **given: Any) -> EmbedRecipe:
        """:attr:`default_recipe` with each field of ``given`` that is not ``None`` in its place (``pooling``,
        ``layers``, ``combine``, ``normalize``, ``max_length``, ``truncation``, ``prompt``, ``include_prompt``,
        ``dimensions``), and ``prompt_name`` naming one of the folder's prompts (``describe()["prompts"]``)."""
        return recipe_for(self.manifest.recipe, str(self.model_dir), **given)

    @functools.cached_property
    def _dense_layers(self) -> dict[str, DenseLayer]:
        """The folder's Dense layers, loaded once from their verified weights file (empty if it has none)."""
        records = self.manifest.recipe.dense
        if not records:
            return {}
        name = interface.RECIPE_WEIGHTS_FILE
        self.manifest.verify_files(self.model_dir, [name])
        with np.load(self.model_dir / name, allow_pickle=False) as weights:
            arrays = {key: np.asarray(weights[key], dtype=np.float32) for key in weights.files}
        try:
            return {
                str(r["name"]): DenseLayer(
                    name=str(r["name"]),
                    weight=arrays[f"{r['name']}.weight"],
                    bias=arrays.get(f"{r['name']}.bias"),
                    activation=str(r["activation"]),
                    use_residual=bool(r.get("use_residual", False)),
                    residual=arrays.get(f"{r['name']}.residual"),
                )
                for r in records
            }
        except (KeyError, ValueError) as exc:
            raise ModelFolderError(f"{self.model_dir / name}: does not hold the recipe's dense layers ({exc})") from exc

    def prompt_length(self, prompt: str | None, max_length: int) -> int:
        """How many tokens a ``prompt`` takes at the start of every text, as sentence-transformers counts them: the
        prompt tokenized alone (cut to ``max_length``), less a closing special token ([SEP])."""
        if not prompt:
            return 0
        ids = list(self.tokenizer.encodings([prompt], max_length)[0].ids)
        special = {int(i) for i, token in self.tokenizer.backend.get_added_tokens_decoder().items() if token.special}
        return len(ids) - (1 if ids and ids[-1] in special else 0)

    def pooling_for(self, recipe: EmbedRecipe) -> Pooling:
        """The vector step of ``recipe`` for this model: layers checked, dense layers loaded, the prompt's length
        counted, ``dimensions`` checked against the vector's length; ``pooling="pooler"`` refused for a family
        without a pooler."""
        if not isinstance(recipe, EmbedRecipe):
            raise InvalidTypeError(f"recipe={recipe!r} must be an EmbedRecipe")
        if POOLER in recipe.modes and not self.family.pooler:
            raise InvalidValueError(
                f"pooling='pooler' reads pooler_output, and {self.family.model_type} models have no pooler "
                f"({self.model_dir} has no pooler_output); use pooling='cls' or 'mean'"
            )
        layers = self._dense_layers
        missing = [name for name in recipe.dense if name not in layers]
        if missing:
            have = ", ".join(layers) or "none"
            raise InvalidValueError(f"dense layer(s) {', '.join(missing)} are not in {self.model_dir} (it has {have})")
        prompt_length = (
            0 if recipe.include_prompt else self.prompt_length(recipe.prompt, self._check_max_length(recipe.max_length))
        )
        pooling = Pooling.create(
            recipe.modes,
            recipe.layers,
            recipe.combine,
            recipe.normalize,
            self.num_layers,
            tuple(layers[name] for name in recipe.dense),
            None,
            prompt_length,
        )
        width = pooling.pooled_dim(self.hidden_size)
        for layer in pooling.dense:
            if layer.in_features != width:
                raise InvalidValueError(
                    f"dense layer {layer.name} takes vectors of {layer.in_features} values, but this recipe's "
                    f"are {width} long here"
                )
            width = layer.out_features
        if recipe.dimensions is not None and recipe.dimensions > width:
            raise InvalidValueError(
                f"dimensions={recipe.dimensions} must be in [1, {width}]: this recipe's vectors have {width} values"
            )
        return dataclasses.replace(pooling, dimensions=recipe.dimensions)

    def dim(self, recipe: EmbedRecipe | None = None) -> int:
        """Length of each vector of ``recipe`` (default: :attr:`default_recipe`)."""
        return self.pooling_for(self.default_recipe if recipe is None else recipe).dim(self.hidden_size)

    def embed(
        self,
        texts: str | Sequence[str],
        pooling: str | Sequence[str] | None = None,
        layers: int | Sequence[int] | None = None,
        combine: str | None = None,
        normalize: bool | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        truncation: bool | None = None,
        progress: Callable[[int], object] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        *,
        prompt: str | None = None,
        prompt_name: str | None = None,
        include_prompt: bool | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        """One float32 vector per text, shape ``(len(texts), dim)``, in input order.

        By default, the folder's own recipe (:attr:`default_recipe`: a sentence-transformers checkpoint's pooling,
        Dense layers, normalization, length and default prompt; else [CLS], not normalized, the model's length).
        Each keyword given replaces that field (an :class:`~bert_onnx.runtime.recipe.EmbedRecipe`'s): ``pooling``
        "cls", "pooler", "mean", "max", "mean_sqrt_len_tokens", "weightedmean" or "lasttoken"; ``layers`` pools
        hidden states instead of ``last_hidden_state`` (e.g. ``[-4, -3, -2, -1]``) and ``combine`` joins them,
        "concat" (dim = hidden * len(layers)) or "mean"; ``normalize`` scales each vector to unit length;
        ``prompt_name`` picks one of the folder's prompts (``prompt`` gives the text itself, ``""`` none);
        ``dimensions`` keeps the first N values (then renormalized when the recipe normalizes). ``batch_size`` and
        ``max_tokens`` bound a batch (:class:`~bert_onnx.runtime.recipe.Batching`). See :meth:`embed_recipe`.
        """
        recipe = self.resolve_recipe(
            pooling=pooling,
            layers=layers,
            combine=combine,
            normalize=normalize,
            max_length=max_length,
            truncation=truncation,
            prompt=prompt,
            prompt_name=prompt_name,
            include_prompt=include_prompt,
            dimensions=dimensions,
        )
        return self.embed_recipe(texts, recipe, progress, batching=Batching(batch_size, max_tokens))

    def embed_recipe(
        self,
        texts: str | Sequence[str],
        recipe: EmbedRecipe | None = None,
        progress: Callable[[int], object] | None = None,
        *,
        batching: Batching | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` by ``recipe`` (default: :attr:`default_recipe`), exactly that recipe: shape
        ``(len(texts), self.dim(recipe))``, in input order.

        Texts (the recipe's prompt prepended) are sorted by length into batches of at most ``batching.batch_size``
        texts and ``batching.max_tokens`` padded tokens (:mod:`bert_onnx.runtime.batching`), each padded only to
        its own longest text, and only the outputs the recipe needs are fetched. A text's vector does not depend on
        its batch. ``progress(n)`` is called after each batch with the number of texts it finished. A text left with
        no token to pool (its tokens merged into a prompt that ``include_prompt=False`` leaves out) raises
        ``InvalidValueError`` naming it, before its window of texts runs.
        """
        recipe = self.default_recipe if recipe is None else recipe
        batching = Batching() if batching is None else batching
        if not isinstance(batching, Batching):
            raise InvalidTypeError(f"batching={batching!r} must be a Batching")
        pooling = self.pooling_for(recipe)
        batch = check_texts(texts)
        max_length = self._check_max_length(recipe.max_length)
        batching.check_length(max_length)
        if recipe.prompt is not None:
            batch = [recipe.prompt + text for text in batch]
        result = np.empty((len(batch), pooling.dim(self.hidden_size)), dtype=np.float32)
        # Tokenized a window at a time, so memory beyond ``result`` stays bounded whatever the number of texts.
        for offset in range(0, len(batch), EMBED_WINDOW):
            window = batch[offset : offset + EMBED_WINDOW]
            batches = tokenized_batches(
                self.tokenizer,
                window,
                max_length,
                recipe.truncation,
                batching.batch_size,
                batching.max_tokens,
                first_index=offset,
                check=functools.partial(pooling.check_tokens, first_index=offset),
            )
            for rows, tokens in batches:
                outputs = self._forward(tokens, pooling.fetch)
                result[[offset + i for i in rows]] = pooling(outputs, tokens.attention_mask)
                if progress is not None:
                    progress(len(rows))
        return result

    # -- the batching interface (bert_onnx.serve.model.Model): run tokens a caller has already made -----------

    def pad(self, tokens: Sequence[TokenIds]) -> TokenizedBatch:
        """Right-pad tokenized texts (``[CLS]`` and ``[SEP]`` included) into one batch as wide as its longest."""
        return self.tokenizer.pad(tokens, "longest", self.max_length)

    def forward(self, batch: TokenizedBatch, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The graph outputs ``names`` for one padded batch, by name (only those are fetched)."""
        return self._forward(batch, names)
