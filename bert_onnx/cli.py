"""``bert-onnx``: a thin command line over :func:`bert_onnx.export.export_model` and :class:`Encoder`.

Each command parses its arguments and calls the library; errors become one ``bert-onnx: error: ...`` line
and exit status 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bert_onnx import __version__

EXPORT_EXTRA_HINT = "bert-onnx export needs the export extra: pip install 'bert-onnx[export]'"


def _export(args: argparse.Namespace) -> int:
    try:
        from bert_onnx.export import export_model
    except ImportError as exc:
        raise SystemExit(f"bert-onnx: error: {EXPORT_EXTRA_HINT} ({exc})") from exc
    export_model(
        args.model, args.output, opset=args.opset, force=args.force, revision=args.revision, variants=args.variants
    )
    return 0


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """``"-4,-3,-2,-1"``, ``"-4:"`` or ``"0,6,12"`` -> hidden-state indices (slices resolve over 0..N)."""
    indices = range(num_layers + 1)
    layers: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        try:
            if ":" in part:
                bounds = [int(b) if b.strip() else None for b in part.split(":")]
                if len(bounds) > 3:
                    raise ValueError(part)
                layers.extend(indices[slice(*bounds)])
            else:
                layers.append(int(part))
        except ValueError as exc:
            raise ValueError(f"--layers {spec!r}: {part!r} is not an int or a start:stop slice") from exc
    if not layers:
        raise ValueError(f"--layers {spec!r} selects no hidden state (this model has 0..{num_layers})")
    return layers


def _read_texts(source: str) -> list[str]:
    """One text per line; only the line break is removed, so empty lines stay (as empty texts)."""
    raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    texts = []
    for number, line in enumerate(lines, start=1):
        try:
            texts.append(line.removesuffix(b"\r").decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{source}: line {number} is not valid UTF-8 ({exc.reason})") from exc
    return texts


def _embed(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from bert_onnx._files import atomic_write
    from bert_onnx.runtime import Encoder, TextTooLongError

    output = Path(args.output)
    if not output.parent.is_dir():
        raise ValueError(f"--output {output}: folder {output.parent} does not exist")
    if output.is_dir():
        raise ValueError(f"--output {output} is a folder; give a file name such as {output / 'embeddings.npy'}")
    texts = _read_texts(args.input)
    encoder = Encoder(args.model_dir, device=args.device, threads=args.threads, variant=args.variant)
    layers = None if args.layers is None else parse_layers(args.layers, encoder.num_layers)
    with tqdm(total=len(texts), unit="text", file=sys.stderr, disable=args.quiet, desc="embedding") as bar:
        try:
            vectors = encoder.embed(
                texts,
                pooling=args.pooling,
                layers=layers,
                combine=args.combine,
                normalize=args.normalize,
                batch_size=args.batch_size,
                max_length=args.max_length,
                truncation=not args.no_truncation,
                progress=bar.update,
            )
        except TextTooLongError as exc:
            raise ValueError(
                f"{args.input}: line {exc.index + 1} is {exc.length} tokens long, over --max-length "
                f"{exc.max_length}; drop --no-truncation to cut such lines"
            ) from exc
    atomic_write(output, lambda handle: np.save(handle, vectors))
    print(f"wrote {output}: {vectors.shape[0]} x {vectors.shape[1]} float32", file=sys.stderr)
    return 0


def format_info(model_dir: Path, verify: bool) -> str:
    from bert_onnx.manifest import Manifest

    manifest = Manifest.read(model_dir)
    if verify:
        manifest.verify_files(model_dir)
    rows = [
        ("folder", str(model_dir)),
        ("source", manifest.source),
        ("revision", manifest.revision or "-"),
        ("created", manifest.created or "-"),
        ("layers", str(manifest.num_layers)),
        ("hidden size", str(manifest.hidden_size)),
        ("vocab size", str(manifest.vocab_size)),
        ("max length", str(manifest.max_length)),
        ("opset", str(manifest.opset)),
        ("format", f"{manifest.format} v{manifest.format_version}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in manifest.versions.items())),
        ("inputs", ", ".join(f"{n} {_axes(a)}" for n, a in manifest.inputs.items())),
        ("outputs", f"{len(manifest.outputs)}: " + ", ".join(manifest.outputs)),
        ("variants", ", ".join(manifest.variants)),
        ("checksums", "verified" if verify else "not checked (--no-verify)"),
    ]
    rows += [(f"  {name}", f"sha256 {digest}") for name, digest in manifest.files.items()]
    width = max(len(k) for k, _ in rows)
    lines = [f"{key:<{width}}  {value}" for key, value in rows]
    lines += [f"note: {note}" for note in manifest.notes]
    parity = manifest.parity
    lines += ["", f"parity against PyTorch at export ({parity.description}):", parity.table()]
    for name, variant in manifest.variants.items():
        if name == "fp32":
            continue
        devices = ", ".join(variant.devices)
        lines += ["", f"variant {name}: {variant.file}, for {devices}; gate: {variant.gate}", variant.table()]
    return "\n".join(lines)


def _axes(axes: dict[int, str]) -> str:
    return "(" + ", ".join(axes.get(i, "?") for i in range(max(axes) + 1)) + ")"


def _info(args: argparse.Namespace) -> int:
    print(format_info(Path(args.model_dir), verify=not args.no_verify))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert-onnx",
        description="Export BERT to ONNX with every hidden state, and run it without PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"bert-onnx {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    export = commands.add_parser(
        "export",
        help="export a BERT checkpoint to a verified ONNX model folder",
        description="Export MODEL with last_hidden_state, pooler_output and hidden_states.0..N, validate every "
        "output against PyTorch (max abs diff <= 1e-4, else exit 1 and write nothing), and write DIR atomically.",
    )
    export.add_argument(
        "model",
        nargs="?",
        default="bert-base-uncased",
        metavar="MODEL",
        help="hub id (default: bert-base-uncased; needs the hub or its local cache) or a local checkpoint folder",
    )
    export.add_argument("--output", "-o", required=True, metavar="DIR", help="model folder to create")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset, 14..20 (default: 17)")
    export.add_argument("--revision", help="hub revision (branch, tag or commit) for a hub id")
    export.add_argument("--force", action="store_true", help="replace DIR if it is an earlier export")
    export.add_argument(
        "--variants",
        default="fp32",
        metavar="LIST",
        help="comma-separated: fp32 (always), opt (fused), int8 (CPU), fp16 (CUDA); each must pass its gate "
        "(default: fp32)",
    )
    export.set_defaults(func=_export)

    embed = commands.add_parser(
        "embed",
        help="embed a text file, one text per line, into a .npy array",
        description="Embed every line of --input (one text per line, '-' for stdin) into a float32 (lines, dim) "
        "array saved atomically to --output. Texts over --max-length tokens are truncated unless --no-truncation.",
    )
    embed.add_argument("model_dir", metavar="DIR", help="folder written by bert-onnx export")
    embed.add_argument("--input", "-i", required=True, metavar="FILE", help="UTF-8 text file, or - for stdin")
    embed.add_argument("--output", "-o", required=True, metavar="OUT.npy", help="where to save the array")
    embed.add_argument("--pooling", choices=("cls", "pooler", "mean"), default="cls", help="default: cls")
    embed.add_argument(
        "--layers",
        metavar="SPEC",
        help="hidden states to pool instead of the last layer: ints and start:stop slices, e.g. --layers=-4: "
        "(the last four; use '=' before a leading minus) or --layers 0,6,12",
    )
    embed.add_argument("--combine", choices=("concat", "mean"), default="concat", help="how --layers are joined")
    embed.add_argument("--normalize", action="store_true", help="scale every vector to unit length")
    embed.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    embed.add_argument(
        "--variant",
        choices=("fp32", "opt", "int8", "fp16"),
        help="which stored graph to run (default: the fastest the folder has for --device; see bert-onnx info)",
    )
    embed.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: physical cores)")
    embed.add_argument("--batch-size", type=int, default=32, help="texts per batch (default: 32)")
    embed.add_argument("--max-length", type=int, help="tokens per text (default: the model's, 512)")
    embed.add_argument("--no-truncation", action="store_true", help="fail on a text over --max-length tokens")
    embed.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    embed.set_defaults(func=_embed)

    info = commands.add_parser("info", help="show a model folder's manifest", description="Show DIR's manifest.")
    info.add_argument("model_dir", metavar="DIR", help="folder written by bert-onnx export")
    info.add_argument("--no-verify", action="store_true", help="skip checking the files' SHA-256")
    info.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("bert-onnx: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        # ExportError, ParityError, ModelFolderError and ProviderError are among these.
        print(f"bert-onnx: error: {exc}", file=sys.stderr)
        return 1
