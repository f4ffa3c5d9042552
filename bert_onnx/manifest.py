"""``manifest.json``: what a model folder holds, where it came from, and how well it matched PyTorch.

Shared by export (which writes it) and runtime (which reads and checks it); imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bert_onnx import choices, families, interface
from bert_onnx._files import atomic_write_text
from bert_onnx.errors import BertOnnxError

FORMAT = "bert-onnx"
# Bump when a reader of the previous version would misread the folder. 2: the folder carries its embedding recipe
# (``Manifest.recipe``), which a version-1 reader would ignore, giving other vectors than the model's.
FORMAT_VERSION = 2


class ModelFolderError(BertOnnxError, ValueError):
    """A model folder is missing a file, has a corrupt or tampered file, or a manifest we cannot read."""


@dataclass(frozen=True)
class Check:
    """One measured quantity of a variant's gate and the limit it had to meet."""

    name: str
    value: float
    limit: float
    at_least: bool = False  # True: value >= limit passes; False: value <= limit passes

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit


def checks_table(checks: Iterable[Check], measured_on: dict[str, Any] | None = None) -> str:
    """The one table of a gate's checks (export's parity, a variant's gate, verify's), a line each."""
    checks = tuple(checks)
    width = max(len("check"), *(len(c.name) for c in checks))
    lines = [f"{'check':<{width}}  {'measured':>10}  {'limit':>10}  result"]
    for c in checks:
        limit = f"{'>=' if c.at_least else '<='} {c.limit:.4g}"
        lines.append(f"{c.name:<{width}}  {c.value:>10.4g}  {limit:>10}  {'ok' if c.passed else 'FAIL'}")
    if measured_on:
        isa = ", ".join(measured_on.get("isa", ())) or "none of note"
        lines.append(f"measured on {measured_on.get('cpu', '?')} (instruction sets: {isa})")
    return "\n".join(lines)


@dataclass(frozen=True)
class OutputParity:
    """Max abs difference of one graph output to PyTorch, over non-padded positions."""

    name: str
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


@dataclass(frozen=True)
class ParityReport:
    """Export-time comparison of ONNX Runtime against PyTorch on one padded batch."""

    batch_size: int
    sequence_length: int
    description: str
    outputs: tuple[OutputParity, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def failures(self) -> tuple[OutputParity, ...]:
        return tuple(o for o in self.outputs if not o.passed)

    @property
    def checks(self) -> tuple[Check, ...]:
        return tuple(Check(f"{o.name} max abs diff", o.max_abs_diff, o.tolerance) for o in self.outputs)

    def table(self) -> str:
        """Every output's max abs diff against its tolerance, one line each (:func:`checks_table`)."""
        return checks_table(self.checks)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParityReport:
        return cls(
            batch_size=int(data["batch_size"]),
            sequence_length=int(data["sequence_length"]),
            description=str(data["description"]),
            outputs=tuple(OutputParity(**o) for o in data["outputs"]),
        )


@dataclass(frozen=True)
class VariantRecord:
    """A stored model variant: its file, the devices it is for, and the gate it passed at export."""

    file: str
    devices: tuple[str, ...]
    gate: str  # what was measured, against what, on which data
    checks: tuple[Check, ...]
    # Where the gate was measured: CPU model, instruction sets, library versions (int8 rounds differently per CPU).
    measured_on: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def table(self) -> str:
        return checks_table(self.checks, self.measured_on)

    @classmethod
    def from_parity(cls, file: str, devices: tuple[str, ...], report: ParityReport) -> VariantRecord:
        return cls(
            file=file,
            devices=devices,
            gate=f"max abs diff to PyTorch fp32 per output, non-padded positions ({report.description})",
            checks=report.checks,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantRecord:
        return cls(
            file=str(data["file"]),
            devices=tuple(data["devices"]),
            gate=str(data["gate"]),
            checks=tuple(Check(**c) for c in data["checks"]),
            measured_on=dict(data.get("measured_on") or {}),
        )


RECIPE_ORIGINS: tuple[str, ...] = ("none", "sentence-transformers")


@dataclass(frozen=True)
class RecipeRecord:
    """The embedding recipe a folder carries, and where it came from.

    ``origin`` "none" (the checkpoint had no sentence-transformers files, or the folder is older than this record):
    no recipe, so ``Encoder.embed`` keeps its own default ([CLS], not normalized, the model's length).
    "sentence-transformers": read at export from ``files`` (modules.json, 1_Pooling/config.json, ...). ``recipe``
    holds :class:`~bert_onnx.runtime.recipe.EmbedRecipe` fields (the runtime validates them); ``dense`` the Dense
    layers' shapes and activations, their weights in :data:`~bert_onnx.interface.RECIPE_WEIGHTS_FILE`. ``prompts``
    maps prompt names to the text prepended to every input; ``default_prompt_name`` is the one used when none is
    asked for. ``understood`` is False when the export met files or modules it does not understand and was told to
    go on (``--allow-unknown-modules``): then ``problems`` says what, and nothing of the recipe is applied.
    """

    origin: str = "none"
    understood: bool = True
    recipe: dict[str, Any] = field(default_factory=dict)
    dense: tuple[dict[str, Any], ...] = ()
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    files: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"{interface.MANIFEST_FILE}: recipe"
        if self.origin not in RECIPE_ORIGINS:
            raise ModelFolderError(f"{where} origin {self.origin!r} is not one of {', '.join(RECIPE_ORIGINS)}")
        if self.origin == "none" and (self.recipe or self.dense or self.prompts or not self.understood):
            raise ModelFolderError(f"{where}: origin 'none' carries no recipe")
        if not self.understood and not self.problems:
            raise ModelFolderError(f"{where}: marked not understood without saying why")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ModelFolderError(f"{where}: default prompt {self.default_prompt_name!r} is not among its prompts")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.prompts.items()):
            raise ModelFolderError(f"{where}: prompts must map names to texts")

    @property
    def carried(self) -> bool:
        """Whether the folder carries a recipe of its own (understood or not)."""
        return self.origin != "none"

    def summary(self) -> str:
        """One line: where the recipe came from and what it is, or that there is none."""
        if not self.carried:
            return "none: the checkpoint had no sentence-transformers files; Encoder.embed's own default applies"
        read = f"{self.origin} ({', '.join(self.files)})"
        if not self.understood:
            return f"NOT UNDERSTOOD, nothing of it is applied: {'; '.join(self.problems)} [{read}]"
        fields = ", ".join(f"{k}={v!r}" for k, v in self.recipe.items())
        return f"{fields} [from {read}]"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecipeRecord:
        return cls(
            origin=str(data.get("origin", "none")),
            understood=bool(data.get("understood", True)),
            recipe=dict(data.get("recipe") or {}),
            dense=tuple(dict(d) for d in data.get("dense") or ()),
            prompts=dict(data.get("prompts") or {}),
            default_prompt_name=data.get("default_prompt_name"),
            similarity_fn_name=data.get("similarity_fn_name"),
            files=tuple(data.get("files") or ()),
            modules=tuple(data.get("modules") or ()),
            problems=tuple(data.get("problems") or ()),
            notes=tuple(data.get("notes") or ()),
        )


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to trust and describe a model folder."""

    source: str
    revision: str | None
    num_layers: int
    hidden_size: int
    vocab_size: int
    type_vocab_size: int
    max_length: int
    pad_token_id: int
    opset: int
    versions: dict[str, str]
    inputs: dict[str, dict[int, str]]
    outputs: dict[str, dict[int, str]]
    files: dict[str, str]  # file name -> SHA-256 hex digest
    parity: ParityReport
    notes: tuple[str, ...] = ()
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, VariantRecord] = field(default_factory=dict)
    recipe: RecipeRecord = field(default_factory=RecipeRecord)  # folders from before it: no recipe
    # The model family (bert_onnx.families, by transformers model_type); folders from before it was recorded are BERT.
    family: str = families.BERT.model_type

    def __post_init__(self) -> None:
        if self.family not in families.FAMILIES:
            raise ModelFolderError(
                f"{interface.MANIFEST_FILE}: family {self.family!r} is not one this bert-onnx knows "
                f"({', '.join(families.FAMILIES)}); upgrade bert-onnx or re-export the model"
            )
        if not self.variants:  # folders without a variants table hold the fp32 graph only
            fp32 = VariantRecord.from_parity(interface.MODEL_FILE, choices.get(choices.DEFAULT).devices, self.parity)
            object.__setattr__(self, "variants", {choices.DEFAULT: fp32})
        for name, variant in self.variants.items():
            if name not in choices.CHOICES or variant.file != choices.CHOICES[name].file:
                raise ModelFolderError(f"{interface.MANIFEST_FILE}: unknown variant {name!r} ({variant.file})")
            for name_of_file in choices.CHOICES[name].all_files:
                if name_of_file not in self.files:
                    raise ModelFolderError(f"{interface.MANIFEST_FILE}: no checksum recorded for {name_of_file}")
            if not variant.passed:
                raise ModelFolderError(f"{interface.MANIFEST_FILE}: variant {name!r} is stored but failed its gate")
        pooler = self.model_family.pooler
        expected = interface.output_names(self.num_layers, pooler)
        if tuple(self.outputs) != expected:
            raise ModelFolderError(
                f"{interface.MANIFEST_FILE}: outputs {list(self.outputs)} do not match the {self.num_layers}-layer "
                f"interface {list(expected)} (family {self.family})"
            )
        if self.outputs != interface.output_axes(self.num_layers, pooler):
            raise ModelFolderError(f"{interface.MANIFEST_FILE}: output axes {self.outputs} are not the interface's")
        # Segment ids are optional (a checkpoint with one segment type has none), the rest is the family's.
        most = self.model_family.graph_inputs(type_vocab_size=2)
        allowed = (most, most[:2])
        if self.inputs not in [interface.input_axes(names) for names in allowed]:
            raise ModelFolderError(
                f"{interface.MANIFEST_FILE}: inputs {self.inputs} are not a {self.family} graph's "
                f"({' or '.join(str(list(names)) for names in dict.fromkeys(allowed))}, axes (batch, sequence))"
            )
        if tuple(o.name for o in self.parity.outputs) != expected:
            raise ModelFolderError(f"{interface.MANIFEST_FILE}: the parity report does not cover every output")
        missing = [name for name in interface.CHECKSUMMED_FILES if name not in self.files]
        if missing:
            raise ModelFolderError(f"{interface.MANIFEST_FILE}: no checksum recorded for {', '.join(missing)}")
        if self.recipe.dense and interface.RECIPE_WEIGHTS_FILE not in self.files:
            raise ModelFolderError(
                f"{interface.MANIFEST_FILE}: the recipe has dense layers but no checksum for "
                f"{interface.RECIPE_WEIGHTS_FILE}"
            )

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.outputs)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    @property
    def model_family(self) -> families.ModelFamily:
        return families.FAMILIES[self.family]

    def to_json(self) -> str:
        data = asdict(self)
        data["notes"] = list(self.notes)
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise ModelFolderError(f"{interface.MANIFEST_FILE}: format {data.get('format')!r} is not {FORMAT!r}")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise ModelFolderError(
                f"{interface.MANIFEST_FILE}: format_version {version!r} is not supported by this bert-onnx "
                f"(reads 1..{FORMAT_VERSION}); upgrade bert-onnx or re-export the model"
            )

        def axes(d: dict[str, dict[str, str]]) -> dict[str, dict[int, str]]:
            return {name: {int(k): v for k, v in ax.items()} for name, ax in d.items()}

        try:
            return cls(
                source=str(data["source"]),
                revision=data.get("revision"),
                num_layers=int(data["num_layers"]),
                hidden_size=int(data["hidden_size"]),
                vocab_size=int(data["vocab_size"]),
                type_vocab_size=int(data["type_vocab_size"]),
                max_length=int(data["max_length"]),
                pad_token_id=int(data["pad_token_id"]),
                opset=int(data["opset"]),
                versions=dict(data["versions"]),
                inputs=axes(data["inputs"]),
                outputs=axes(data["outputs"]),
                files=dict(data["files"]),
                parity=ParityReport.from_dict(data["parity"]),
                notes=tuple(data.get("notes", ())),
                format_version=version,
                created=str(data.get("created", "")),
                extra=dict(data.get("extra", {})),
                variants={name: VariantRecord.from_dict(v) for name, v in data.get("variants", {}).items()},
                recipe=RecipeRecord.from_dict(data.get("recipe") or {}),
                family=str(data.get("family", families.BERT.model_type)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ModelFolderError):
                raise
            raise ModelFolderError(f"{interface.MANIFEST_FILE}: malformed manifest ({exc!r})") from exc

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        path = Path(folder) / interface.MANIFEST_FILE
        if not path.is_file():
            raise ModelFolderError(f"{path}: missing; is {folder} a folder written by `bert-onnx export`?")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFolderError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ModelFolderError(f"{path}: expected a JSON object")
        return cls.from_dict(data)

    def write(self, folder: str | Path) -> None:
        atomic_write_text(Path(folder) / interface.MANIFEST_FILE, self.to_json())

    def verify_files(self, folder: str | Path, names: Iterable[str] | None = None) -> None:
        """Check that recorded files (all, or ``names``) exist and match their SHA-256; raise naming a bad file."""
        for name in self.files if names is None else names:
            expected = self.files[name]
            path = Path(folder) / name
            if not path.is_file():
                raise ModelFolderError(f"{path}: missing (listed in {interface.MANIFEST_FILE})")
            actual = sha256_file(path)
            if actual != expected:
                raise ModelFolderError(
                    f"{path}: SHA-256 {actual} does not match {interface.MANIFEST_FILE} ({expected}); "
                    "the file is corrupt, truncated or was modified after export"
                )


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
