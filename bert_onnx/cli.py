"""``bert-onnx``: a thin command line over :func:`bert_onnx.export.export_model` and :class:`Encoder`.

Each command parses its arguments and calls the library; errors become one ``bert-onnx: error: ...`` line
and exit status 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bert_onnx import __version__, choices
from bert_onnx.errors import BertOnnxError, InvalidValueError
from bert_onnx.families import FAMILIES
from bert_onnx.runtime.pooling import COMBINES, POOLINGS, Pooling
from bert_onnx.runtime.recipe import Batching, EmbedRecipe

EXPORT_EXTRA_HINT = "bert-onnx export needs the export extra: pip install 'bert-onnx[export]'"


def _export(args: argparse.Namespace) -> int:
    try:
        from bert_onnx.export import export_model
    except ImportError as exc:
        raise SystemExit(f"bert-onnx: error: {EXPORT_EXTRA_HINT} ({exc})") from exc
    export_model(
        args.model,
        args.output,
        opset=args.opset,
        force=args.force,
        revision=args.revision,
        variants=args.variants,
        log=lambda message: print(message, file=sys.stderr, flush=True),
        allow_unknown_modules=args.allow_unknown_modules,
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
                    raise InvalidValueError(part)
                layers.extend(indices[slice(*bounds)])
            else:
                layers.append(int(part))
        except ValueError as exc:
            raise InvalidValueError(f"--layers {spec!r}: {part!r} is not an int or a start:stop slice") from exc
    if not layers:
        raise InvalidValueError(f"--layers {spec!r} selects no hidden state (this model has 0..{num_layers})")
    return layers


def _encoder_and_recipe(args: argparse.Namespace) -> tuple[Any, EmbedRecipe]:
    """The Encoder and the recipe the shared engine and recipe flags (``embed``, ``serve``) ask for."""
    from bert_onnx.runtime import Encoder

    encoder = Encoder(
        args.model_dir,
        device=args.device,
        threads=args.threads,
        variant=args.variant,
        backend=args.backend,
        precision=args.precision,
    )
    recipe = _recipe(args, encoder.manifest)
    encoder.pooling_for(recipe)  # checks layers, dense layers and dimensions against this model
    return encoder, recipe


def _recipe(args: argparse.Namespace, manifest: Any) -> EmbedRecipe:
    """The one recipe both engines run: the folder's own, with each recipe flag given in its place."""
    from bert_onnx.runtime.recipe import recipe_for

    recipe = recipe_for(
        manifest.recipe,
        str(args.model_dir),
        pooling=args.pooling,
        layers=None if args.layers is None else tuple(parse_layers(args.layers, manifest.num_layers)),
        combine=args.combine,
        normalize=args.normalize,
        max_length=args.max_length,
        truncation=args.truncation,
        prompt=args.prompt,
        prompt_name=args.prompt_name,
        dimensions=args.dimensions,
    )
    if recipe.layers is not None:  # the layers' range, before any work
        Pooling.create(recipe.modes, recipe.layers, recipe.combine, recipe.normalize, manifest.num_layers)
    return recipe


def _input_path(args: argparse.Namespace) -> str:
    """The input file: positional (``embed DIR FILE``) or ``--input``/``-i``, not two different ones."""
    given = [value for value in (args.input, args.input_option) if value is not None]
    if len(set(given)) > 1:
        raise InvalidValueError(f"two inputs, {given[0]!r} and --input {given[1]!r}: give one")
    return given[0]


def _embed_ray(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        import ray  # noqa: F401

        from bert_onnx.integrations.ray import embed_to_parquet
    except ImportError as exc:
        raise InvalidValueError(f"--engine ray needs Ray Data: pip install 'bert-onnx[ray]' ({exc})") from exc
    if args.backend not in (None, "onnxruntime") or args.device != "cpu":
        raise InvalidValueError("--engine ray runs the ONNX Runtime CPU backend; drop --backend/--device")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise InvalidValueError(f"--output {output}: with --engine ray, give a folder for the Parquet parts")
    for name in ("actors", "cpus_per_actor", "chunk_size"):
        if getattr(args, name) < 1:
            raise InvalidValueError(f"--{name.replace('_', '-')} {getattr(args, name)} must be a positive number")
    model_dir = Path(args.model_dir)
    from bert_onnx.manifest import Manifest

    recipe = _recipe(args, Manifest.read(model_dir))
    with tqdm(unit="text", file=sys.stderr, disable=args.quiet, desc="embedding (ray)") as bar:
        summary = embed_to_parquet(
            model_dir,
            Path(_input_path(args)),
            output,
            text_column=args.text_column,
            id_column=args.id_column,
            address=args.address,
            actors=args.actors,
            cpus_per_actor=args.cpus_per_actor,
            rows_per_part=args.chunk_size,
            resume=args.resume,
            recipe=recipe,
            batching=Batching(args.batch_size),
            variant=args.variant,
            progress=bar.update,
        )
    for row_id, reason in summary["bad_rows"][:20]:
        print(f"bert-onnx: row {args.id_column}={row_id!r} not embedded: {reason}", file=sys.stderr)
    if len(summary["bad_rows"]) > 20:
        print(f"bert-onnx: ... and {len(summary['bad_rows']) - 20} more (see the error column)", file=sys.stderr)
    print(
        f"wrote {output}: {summary['rows']} rows in {summary['parts']} Parquet part(s), "
        f"{len(summary['bad_rows'])} not embedded",
        file=sys.stderr,
    )
    return 0


def _embed(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bert_onnx import jobs

    if args.engine == "ray":
        return _embed_ray(args)
    if args.address is not None:
        raise InvalidValueError("--address needs --engine ray")
    output = Path(args.output)
    if not output.parent.is_dir():
        raise InvalidValueError(f"--output {output}: folder {output.parent} does not exist")
    if output.is_dir():
        raise InvalidValueError(f"--output {output} is a folder; give a file name such as {output / 'embeddings.npy'}")
    if args.chunk_size < 1:
        raise InvalidValueError(f"--chunk-size {args.chunk_size} must be a positive number of lines")
    given = _input_path(args)
    from_stdin = given == "-"
    if from_stdin and args.resume:
        raise InvalidValueError("--resume needs --input FILE: standard input cannot be read a second time")
    source = Path(given)
    if not from_stdin and source.is_dir():
        raise InvalidValueError(f"--input {source}: Is a directory")
    if not from_stdin and not source.is_file():
        raise InvalidValueError(f"--input {source}: No such file")
    if not from_stdin:
        jobs.check_apart(source, output, jobs.parts_dir(output))  # before any work; embed_file checks it again
    count = None if from_stdin else jobs.scan(source)[1]
    encoder, recipe = _encoder_and_recipe(args)
    with tqdm(total=count, unit="text", file=sys.stderr, disable=args.quiet, desc="embedding") as bar:
        try:
            rows, dim = jobs.embed_file(
                encoder,
                sys.stdin.buffer if from_stdin else source,
                output,
                recipe,
                batching=Batching(args.batch_size),
                chunk_size=args.chunk_size,
                resume=args.resume,
                progress=bar.update,
            )
        except jobs.LineTooLongError as exc:
            raise InvalidValueError(
                f"{exc.source}: line {exc.line} is {exc.tokens} tokens long, over --max-length {exc.max_length}; "
                "turn truncation on (drop --no-truncation) to cut such lines"
            ) from None
        except KeyboardInterrupt:  # the job has logged what it kept
            print(f"bert-onnx: interrupted; {_what_was_kept(output, from_stdin)}", file=sys.stderr)
            return 130
    print(f"wrote {output}: {rows} x {dim} float32", file=sys.stderr)
    return 0


def _what_was_kept(output: Path, from_stdin: bool) -> str:
    """What an interrupted ``embed`` leaves, and how to go on."""
    from bert_onnx import jobs

    if from_stdin:
        return "nothing was kept: standard input cannot be read again, so a rerun starts from the beginning"
    if jobs.parts_dir(output).exists():
        return f"the finished parts are kept in {jobs.parts_dir(output)}; rerun with --resume to continue"
    return "no part had finished, so nothing was kept"


def _serve(args: argparse.Namespace) -> int:
    try:
        from bert_onnx.serve.server import serve
        from bert_onnx.serve.settings import ServeSettings
    except ImportError as exc:
        raise InvalidValueError(
            f"bert-onnx serve needs the serve extra: pip install 'bert-onnx[serve]' ({exc})"
        ) from exc

    api_key = None
    if args.api_key_env is not None:
        api_key = os.environ.get(args.api_key_env, "")
        if not api_key.strip():
            raise InvalidValueError(
                f"--api-key-env {args.api_key_env}: that environment variable is not set or is empty"
            )
    settings = ServeSettings(
        host=args.host,
        port=args.port,
        max_batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_padding=None if args.max_padding < 0 else args.max_padding,
        api_key=api_key,
        accept_token_ids=args.accept_token_ids,
    )
    encoder, recipe = _encoder_and_recipe(args)

    def listening(url: str) -> None:
        print(f"bert-onnx: serving {encoder!r} on {url}", file=sys.stderr, flush=True)

    serve(encoder, recipe, settings, listening=listening)
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
        ("family", f"{manifest.family} ({'with' if manifest.model_family.pooler else 'no'} pooler)"),
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
        *((f"  not offered: {name}", reason) for name, reason in manifest.model_family.not_offered.items()),
        *((f"not stored: {name}", why) for name, why in manifest.extra.get("variants_not_stored", {}).items()),
        ("recipe", manifest.recipe.summary()),
        *_prompt_rows(manifest.recipe),
        ("runs here", _picked_here(manifest)),
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


def _prompt_rows(record: Any) -> list[tuple[str, str]]:
    """The folder's prompts, its default prompt and similarity, where it has a recipe."""
    if not record.carried:
        return []
    prompts = ", ".join(f"{name}={text!r}" for name, text in record.prompts.items()) or "none"
    rows = [
        ("  prompts", f"{prompts}; default: {record.default_prompt_name or 'none'}"),
        ("  similarity", record.similarity_fn_name or "- (sentence-transformers' default: cosine)"),
    ]
    rows += [("  note", note) for note in record.notes]
    return rows


def _picked_here(manifest: Any) -> str:
    """What Encoder(DIR) runs on this machine's CPU and why (the tuned profile, or the default)."""
    from bert_onnx.runtime import profile

    pick = profile.lookup(manifest, "cpu", None)
    return f"{pick.name or 'fp32'} on cpu: {pick.reason}"


def _axes(axes: dict[int, str]) -> str:
    return "(" + ", ".join(axes.get(i, "?") for i in range(max(axes) + 1)) + ")"


def _info(args: argparse.Namespace) -> int:
    print(format_info(Path(args.model_dir), verify=not args.no_verify))
    return 0


def _progress_bar(args: argparse.Namespace, total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, disable=args.quiet or args.json, desc=desc, unit="step")


def _step(bar: Any) -> Any:
    """A progress callback: each step names itself on ``bar`` and counts the one before it as done."""
    started = False

    def step(message: str) -> None:
        nonlocal started
        if started:
            bar.update(1)
        started = True
        bar.set_postfix_str(message)

    return step


def _outcomes_json(args: argparse.Namespace, outcomes: Sequence[Any], **extra: Any) -> str:
    from bert_onnx import machine
    from bert_onnx.runtime import profile

    return json.dumps(
        {
            "model_dir": str(args.model_dir),
            "device": args.device,
            "threads": args.threads,
            "machine": machine.describe(),
            "versions": profile.library_versions(),
            "choices": [o.to_dict() for o in outcomes],
            "passed": all(o.passed for o in outcomes if o.skipped is None),
            **extra,
        },
        indent=2,
    )


def _exit_status(outcomes: Sequence[Any], what: str) -> int:
    """1, after one error line naming each choice that failed its gate here and the checks it failed; else 0."""
    failed = [o for o in outcomes if o.skipped is None and not o.passed]
    if not failed:
        return 0
    named = "; ".join(f"{o.name} ({', '.join(f'{c.name} {c.value:.4g}' for c in o.record.failures)})" for o in failed)
    print(f"bert-onnx: error: {what}: {named}", file=sys.stderr)
    return 1


def _verify(args: argparse.Namespace) -> int:
    from bert_onnx import machine, tuning

    gated, _ = tuning.steps(args.model_dir, args.device)
    with _progress_bar(args, gated, "verifying") as bar:
        outcomes = tuning.verify(args.model_dir, args.device, args.threads, progress=_step(bar))
        bar.update(1)
    if args.json:
        print(_outcomes_json(args, outcomes))
    else:
        isa = ", ".join(machine.instruction_sets()) or "none of note"
        print(f"{args.model_dir} on {machine.describe()['cpu']} (instruction sets: {isa}), device {args.device}")
        for outcome in outcomes:
            if outcome.skipped is not None:
                print(f"\n{outcome.name}: skipped: {outcome.skipped}")
            else:
                assert outcome.record is not None
                print(f"\n{outcome.name}: {outcome.status}; gate: {outcome.record.gate}\n{outcome.record.table()}")
    return _exit_status(outcomes, "failed its gate here")


def _tune(args: argparse.Namespace) -> int:
    from bert_onnx import tuning
    from bert_onnx.runtime import profile

    if args.rounds < 1 or args.texts < 1:
        raise InvalidValueError(f"--rounds {args.rounds} and --texts {args.texts} must be positive")
    _, total = tuning.steps(args.model_dir, args.device, args.rounds)
    with _progress_bar(args, total, "tuning") as bar:
        outcomes, path, pick = tuning.tune(
            args.model_dir, args.device, args.threads, args.rounds, args.texts, progress=_step(bar),
            objective=args.objective,
        )  # fmt: skip
        bar.update(1)
    if args.json:
        print(
            _outcomes_json(
                args, outcomes, profile=str(path), objective=args.objective, picked=pick.name, picked_by=pick.reason
            )
        )
    else:
        rows = [("choice", "gate", "texts/s", "1 text, ms", "")]
        latency = args.objective == profile.LATENCY
        for o in sorted(outcomes, key=lambda o: (o.one_text_ms or 1e300) if latency else -(o.texts_per_second or -1)):
            if o.skipped is not None:
                rows.append((o.name, "skipped", "-", "-", o.skipped))
                continue
            speed = "-" if o.texts_per_second is None else f"{o.texts_per_second:.1f}"
            latency = "-" if o.one_text_ms is None else f"{o.one_text_ms:.2f}"
            rows.append((o.name, o.status, speed, latency, "<- picked" if o.name == pick.name else ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            name, gate, speed, latency, note = r
            line = f"{name:<{widths[0]}}  {gate:<{widths[1]}}  {speed:>{widths[2]}}  {latency:>{widths[3]}}  {note}"
            print(line.rstrip())
        print(f"\nprofile saved to {path}")
        print(f"Encoder({args.model_dir!r}) now runs {pick.name or 'fp32'} on this machine: {pick.reason}")
    return _exit_status(outcomes, "failed its gate here (not picked)")


def add_recipe_and_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe (what :func:`_recipe` reads) and engine options ``embed`` and ``serve`` share. A recipe flag left
    out keeps the folder's own recipe (bert-onnx info shows it); one given replaces that field."""
    recipe = parser.add_argument_group(
        "recipe",
        "Default: the folder's own (a sentence-transformers checkpoint's pooling, Dense layers, normalization, length "
        "and default prompt, recorded at export; else cls, not normalized, the model's length). Each flag given "
        "replaces that part.",
    )
    recipe.add_argument("--pooling", choices=POOLINGS, help="how token vectors become one (default: the folder's)")
    recipe.add_argument(
        "--layers",
        metavar="SPEC",
        help="hidden states to pool instead of the last layer: ints and start:stop slices, e.g. --layers=-4: "
        "(the last four; use '=' before a leading minus) or --layers 0,6,12",
    )
    recipe.add_argument("--combine", choices=COMBINES, help="how --layers are joined (default: concat)")
    recipe.add_argument(
        "--normalize", action=argparse.BooleanOptionalAction, help="scale every vector to unit length (or not)"
    )
    recipe.add_argument("--max-length", type=int, help="tokens per text, prompt included (default: the folder's)")
    recipe.add_argument(
        "--truncation",
        action=argparse.BooleanOptionalAction,
        help="cut texts over --max-length tokens (default), or fail on them (--no-truncation)",
    )
    recipe.add_argument("--prompt-name", metavar="NAME", help="one of the folder's prompts (bert-onnx info lists them)")
    recipe.add_argument("--prompt", metavar="TEXT", help="text put before every input ('' for none)")
    recipe.add_argument(
        "--dimensions", type=int, metavar="N", help="keep the first N values (Matryoshka), renormalized if normalized"
    )
    parser.add_argument("--device", choices=choices.DEVICES, default="cpu", help="default: cpu")
    parser.add_argument(
        "--variant",
        choices=choices.variants(),
        help="which stored graph to run (default: what `bert-onnx tune` measured fastest here, else fp32; "
        "see bert-onnx info)",
    )
    parser.add_argument(
        "--backend",
        choices=choices.BACKEND_NAMES,
        help="openvino compiles model.onnx with OpenVINO on the CPU (needs bert-onnx[openvino]; default: the tuned "
        "choice's, else onnxruntime)",
    )
    parser.add_argument(
        "--precision",
        choices=choices.precisions(choices.OPENVINO),
        help="with --backend openvino (default: the faster one `bert-onnx tune` measured here, else fp32)",
    )
    parser.add_argument("--threads", type=int, help="intra-op threads (default: physical cores)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per batch (default: 32)")


def add_serve_command(commands: Any) -> None:
    """``bert-onnx serve``'s options; the defaults are :class:`~bert_onnx.serve.settings.ServeSettings`' own."""
    from bert_onnx.serve.settings import ServeSettings  # no server stack: only the checked settings

    defaults = ServeSettings()
    serve = commands.add_parser(
        "serve",
        help="serve embeddings over HTTP (OpenAI-compatible), batching concurrent requests",
        description="Serve DIR over HTTP: POST /v1/embeddings (OpenAI's API, with the recipe given here), /embed "
        "(a recipe per request), /encode (hidden states), /tokenize; GET /health, /info, /metrics (Prometheus). "
        "Concurrent requests are merged into length-sorted batches; every answer equals Encoder.embed of its "
        "texts alone. SIGTERM or Ctrl-C stops accepting, answers every accepted request, and exits 0. Needs "
        "bert-onnx[serve]. See docs/serve.md.",
    )
    serve.add_argument("model_dir", metavar="DIR", help="folder written by bert-onnx export")
    serve.add_argument(
        "--host", default=defaults.host, help=f"address to listen on (default: {defaults.host}, this machine only)"
    )
    serve.add_argument(
        "--port", type=int, default=defaults.port, help=f"default: {defaults.port}; 0 picks a free port (printed)"
    )
    add_recipe_and_engine_arguments(serve)
    serve.add_argument(
        "--max-batch-tokens",
        type=int,
        default=defaults.max_batch_tokens,
        help=f"padded tokens per batch (default: {defaults.max_batch_tokens}; a longer text runs alone)",
    )
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=defaults.max_wait_ms,
        help="how long the batcher may wait for returning clients to fill a batch "
        f"(default: {defaults.max_wait_ms:g}; a lone client never waits)",
    )
    serve.add_argument(
        "--max-padding",
        type=float,
        default=defaults.max_padding,
        metavar="FRACTION",
        help="close a batch before its padding passes this fraction of its real tokens "
        f"(default: {defaults.max_padding}; -1: fill batches to --batch-size and --max-batch-tokens whatever "
        "their padding)",
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        default=defaults.max_queue,
        help=f"texts in flight before new requests get 429 (default: {defaults.max_queue})",
    )
    serve.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="require 'Authorization: Bearer KEY' (all routes but /health), KEY read from environment variable NAME",
    )
    serve.add_argument(
        "--accept-token-ids",
        action="store_true",
        help="take token-id arrays as input on /v1/embeddings, /embed and /encode (default: refused with 422, since "
        "ids from another tokenizer, such as the tiktoken ids LangChain sends by default, give wrong vectors); "
        "only for clients that send this model's own ids (POST /tokenize)",
    )
    serve.set_defaults(func=_serve)


def _add_export_command(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="export a BERT-family checkpoint to a verified ONNX model folder",
        description="Export MODEL (model_type "
        + ", ".join(FAMILIES)
        + ") with last_hidden_state, pooler_output where the family has a pooler, and hidden_states.0..N, validate "
        "every output against PyTorch (max abs diff <= 1e-4, else exit 1 and write nothing), and write DIR "
        "atomically.",
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
    export.add_argument(
        "--force",
        action="store_true",
        help="replace DIR if it is an earlier export holding only the files its manifest.json lists (anything else "
        "in it is named and the export refused)",
    )
    export.add_argument(
        "--allow-unknown-modules",
        action="store_true",
        help="export a sentence-transformers checkpoint whose modules or files bert-onnx does not understand, with "
        "its recipe marked not understood (embedding then needs explicit recipe flags) instead of refusing it",
    )
    export.add_argument(
        "--variants",
        default="fp32",
        metavar="LIST",
        help="comma-separated ways of running to build and gate beside fp32 (always): "
        + "; ".join(f"{c.name}: {c.summary}" for c in choices.CHOICES.values() if c.name != choices.DEFAULT)
        + ". Each named one must pass its gate. 'all': every choice whose gate can be measured on this machine, "
        "storing those that pass it (default: fp32)",
    )
    export.set_defaults(func=_export)


def _add_embed_command(commands: Any) -> None:
    embed = commands.add_parser(
        "embed",
        help="embed a text file, one text per line, into a .npy array",
        description="Embed every line of FILE (one text per line, '-' for stdin) into a float32 (lines, dim) "
        "array saved to --output, by the folder's own recipe unless recipe flags say otherwise. Texts over "
        "--max-length tokens are truncated unless --no-truncation. The input "
        "is streamed in chunks of --chunk-size lines, each saved in OUT.npy.parts/ as it finishes; an interrupted "
        "run (Ctrl-C, kill) of a FILE keeps them, and --resume embeds only what is missing (stdin cannot be read "
        "twice: its run keeps nothing). OUT.npy appears, complete, only at the end; it may not be FILE itself.",
    )
    embed.add_argument("model_dir", metavar="DIR", help="folder written by bert-onnx export")
    embed.add_argument(
        "input", nargs="?", metavar="FILE", help="UTF-8 text, - for stdin (--engine ray: .parquet/.jsonl)"
    )
    embed.add_argument("--input", "-i", dest="input_option", metavar="FILE", help="the same as FILE")
    embed.add_argument(
        "--output", "-o", required=True, metavar="OUT.npy", help="where to save the array (--engine ray: a folder)"
    )
    add_recipe_and_engine_arguments(embed)
    embed.add_argument(
        "--chunk-size", type=int, default=10_000, help="lines per saved chunk (default: 10000); memory use follows it"
    )
    embed.add_argument(
        "--resume", action="store_true", help="continue an interrupted run of the same input, model and settings"
    )
    embed.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    ray_group = embed.add_argument_group(
        "Ray (--engine ray)",
        "Embed a Parquet or JSONL --input on a Ray cluster into Parquet parts in the --output folder (id, embedding, "
        "error per row; --chunk-size rows per part; the folder may not hold the input). Bad rows (a null or missing "
        "text) are kept with a NaN vector and listed; a JSONL where no line has --text-column is refused. A finished "
        "folder is kept: delete it to embed again. Needs bert-onnx[ray]; nothing about Ray is imported without "
        "--engine ray.",
    )
    ray_group.add_argument("--engine", choices=("local", "ray"), default="local", help="default: local")
    ray_group.add_argument("--address", help="Ray cluster: auto, ray://HOST:10001 (default: start a local one)")
    ray_group.add_argument("--text-column", default="text", help="default: text")
    ray_group.add_argument("--id-column", default="id", help="kept beside each embedding (default: id)")
    ray_group.add_argument("--actors", type=int, default=1, help="model replicas (default: 1)")
    ray_group.add_argument("--cpus-per-actor", type=int, default=1, help="ONNX Runtime threads each (default: 1)")
    embed.set_defaults(func=_embed)


def _add_info_command(commands: Any) -> None:
    info = commands.add_parser("info", help="show a model folder's manifest", description="Show DIR's manifest.")
    info.add_argument("model_dir", metavar="DIR", help="folder written by bert-onnx export")
    info.add_argument("--no-verify", action="store_true", help="skip checking the files' SHA-256")
    info.set_defaults(func=_info)


def _add_machine_options(command: argparse.ArgumentParser) -> None:
    """The options verify and tune share."""
    command.add_argument("model_dir", metavar="DIR", help="folder written by bert-onnx export")
    command.add_argument("--device", choices=choices.DEVICES, default="cpu", help="default: cpu")
    command.add_argument("--threads", type=int, help="intra-op threads (default: physical cores)")
    command.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    command.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _add_verify_and_tune_commands(commands: Any) -> None:
    from bert_onnx.runtime.profile import OBJECTIVES, THROUGHPUT

    verify = commands.add_parser(
        "verify",
        help="check every way of running DIR here against PyTorch's stored references",
        description="Measure the export gate of every choice that runs here (the stored graphs under ONNX Runtime, "
        "model.onnx under OpenVINO fp32/bf16) against the PyTorch references stored in DIR at export, without "
        "PyTorch. Prints each gate's table and the instruction sets it ran on; exits 1 naming any choice that fails. "
        "Choices that cannot run here are listed with the reason.",
    )
    _add_machine_options(verify)
    verify.set_defaults(func=_verify)

    tune = commands.add_parser(
        "tune",
        help="measure which way of running DIR is fastest here, and make it Encoder's default on this machine",
        description="Check each choice's gate here as verify does, time those that pass on real text (length-sorted "
        "batches of the stored paragraphs) and on one short text, interleaved, and save the result as this "
        "machine's profile in the user cache ($BERT_ONNX_PROFILE_DIR, else ~/.cache/bert-onnx/profiles). "
        "Encoder(DIR) and bert-onnx embed then run the fastest passing choice here: the most texts/s (--for "
        "throughput, the default) or the least time for one short text (--for latency).",
    )
    _add_machine_options(tune)
    tune.add_argument(
        "--for",
        dest="objective",
        choices=tuple(OBJECTIVES),
        default=THROUGHPUT,
        help="what fastest means: throughput, texts/s on batches of real paragraphs (embedding corpora; default), or "
        "latency, the time of one short text (a service embedding one query at a time). The best choice can differ",
    )
    tune.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default: 3)")
    tune.add_argument("--texts", type=int, default=32, help="real paragraphs per timing (default: 32)")
    tune.set_defaults(func=_tune)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert-onnx",
        description="Export BERT and its relatives to ONNX with every hidden state, and run them without PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"bert-onnx {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_export_command(commands)
    _add_embed_command(commands)
    add_serve_command(commands)
    _add_info_command(commands)
    _add_verify_and_tune_commands(commands)
    return parser


def _show_library_log() -> None:
    """The library reports through logging (e.g. bert_onnx.jobs when resuming); the command line shows it."""
    library = logging.getLogger("bert_onnx")
    if not any(getattr(h, "bert_onnx_cli", False) for h in library.handlers):
        handler = logging.StreamHandler()  # writes to the sys.stderr of the moment it emits
        handler.setFormatter(logging.Formatter("bert-onnx: %(message)s"))
        handler.bert_onnx_cli = True  # type: ignore[attr-defined]
        library.addHandler(handler)
    library.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "embed" and args.input is None and args.input_option is None:
        parser.error("embed needs an input: bert-onnx embed DIR FILE (or --input FILE)")
    _show_library_log()
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("bert-onnx: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (BertOnnxError, OSError) as exc:
        # What bert-onnx refused (bad input, a damaged folder, a failed gate) or the system refused (a missing
        # file, a full disk): one line. Anything else is a bug and keeps its traceback.
        print(f"bert-onnx: error: {exc}", file=sys.stderr)
        return 1
