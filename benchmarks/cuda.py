"""On a GPU: our CUDA variants against PyTorch fp16 with SDPA attention on the same GPU, every output against the last
layer and pooler, ONNX Runtime's CUDA graphs, and pinned or fp16 outputs, side by side in one process.

    python -m benchmarks.cuda --model-dir DIR --checkpoint CKPT [--shapes 1x128 8x128 32x512] [--repeats 20]

DIR is a folder written by ``bert-onnx export CKPT --variants fp32,opt,fp16`` (fp16's gate runs on CUDA, so export
it on the GPU machine). Engines, each timed on the same random ids (full attention mask), interleaved round by round:

- ``bert-onnx-VARIANT``: ``Encoder(DIR, device="cuda", variant=VARIANT).run``, every output copied to host memory
  (last_hidden_state, pooler_output where the model has one, and every hidden state), and ``... last+pooler``:
  ``output_hidden_states=False``, only those two copied (:class:`bert_onnx.runtime.runners.OnnxRuntimeRunner`'s IO
  binding leaves the rest on the device);
- ``pytorch-fp16-sdpa``: transformers' model in fp16 with ``attn_implementation="sdpa"``, under ``torch.no_grad``,
  the same outputs copied to host memory (``.cpu()``, which waits for the GPU), both ways;
- ``ort-cuda-graph-VARIANT last+pooler`` and ``ort-cuda-graph-VARIANT`` (every output): ONNX Runtime with
  ``enable_cuda_graph`` on one session per shape (a CUDA graph replays one shape), inputs and outputs bound to fixed
  device buffers, the ids copied in place, the outputs copied to host memory. The first run captures the graph;
  warm-up rounds absorb it;
- ``ort-bound-VARIANT pinned outputs``: every output bound to a page-locked host buffer (allocated by PyTorch),
  into which ONNX Runtime copies it inside the run;
- ``ort-bound-VARIANT fp16 outputs``: the graph with a float16 Cast on every output (made in a temporary folder),
  halving the bytes copied to the host.

The "÷ last+pooler" column divides each every-output engine's time by its runtime's last+pooler time (ours by
``bert-onnx-VARIANT last+pooler``).

A row that cannot run here (no CUDA, or ONNX Runtime refuses to capture a graph or bind pinned memory) is written
with its reason instead of a time. ``--device cpu`` runs the same engines on the CPU (PyTorch in fp32: fp16 on a
CPU measures nothing useful), to check the script before spending GPU time on it.

The issue's targets, read off the table: bert-base 1 × 128 fp16 with a CUDA graph ≤ 0.7 ms; every output at 32 × 512
≤ 2× last+pooler.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import Column
from bert_onnx import timing

SHAPES = [(1, 128), (8, 128), (32, 512)]
LAST_AND_POOLER = ("last_hidden_state", "pooler_output")
COLUMNS = [
    Column("engine", "engine"),
    harness.SHAPE_COLUMN,
    *harness.TIMING_COLUMNS,
    Column("seq/s", "sequences_per_s", ".1f"),
    Column("× PyTorch same outputs", "x_pytorch", ".2f"),
    Column("÷ last+pooler", "over_last_and_pooler", ".2f"),
    Column("not run", "skipped"),
]

Call = Callable[[], object]


@functools.cache
def _pytorch_model(checkpoint: Path, device: str) -> Any:
    """transformers' model with SDPA attention, fp16 on CUDA (fp32 on the CPU), loaded once per run."""
    import torch
    import transformers

    from bert_onnx.export.graph import read_family

    family = read_family(checkpoint)
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = getattr(transformers, family.model_class).from_pretrained(
        checkpoint, attn_implementation="sdpa", dtype=dtype
    )
    model = model.to(device).eval()
    loaded = (next(model.parameters()).dtype, model.config._attn_implementation)
    if loaded != (dtype, "sdpa"):  # an older transformers would drop an argument it does not know, silently
        raise RuntimeError(f"asked transformers for {dtype} with sdpa attention, it loaded {loaded}")
    return model


def pytorch_engines(checkpoint: Path, device: str, ids: np.ndarray, mask: np.ndarray) -> dict[str, Call]:
    """PyTorch at this shape, both output sets copied to host memory."""
    import torch

    model = _pytorch_model(checkpoint, device)
    feeds = {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}
    label = "pytorch-fp16-sdpa" if device == "cuda" else "pytorch-fp32-sdpa"

    def forward(every: bool) -> object:
        with torch.no_grad():
            out = model(**feeds, output_hidden_states=every)
        tensors = [out.last_hidden_state] + (
            [out.pooler_output] if getattr(out, "pooler_output", None) is not None else []
        )
        tensors += list(out.hidden_states) if every else []
        return [t.cpu() for t in tensors]  # .cpu() waits for the GPU: the call ends with the values on the host

    return {label: partial(forward, True), f"{label} last+pooler": partial(forward, False)}


def encoder_engines(model_dir: Path, device: str, variant: str, ids: np.ndarray, mask: np.ndarray) -> dict[str, Call]:
    from bert_onnx.runtime import Encoder

    encoder = Encoder(model_dir, device=device, variant=variant)
    name = f"bert-onnx-{variant}"
    return {
        name: lambda: encoder.run(ids, mask),
        f"{name} last+pooler": lambda: encoder.run(ids, mask, output_hidden_states=False),
    }


def _with_fp16_outputs(path: Path, folder: Path) -> Path:
    """A copy of the graph at ``path`` in ``folder`` whose every output is cast to float16 on the device."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    for output in model.graph.output:
        inner = f"{output.name}/float32"
        for node in model.graph.node:
            node.output[:] = [inner if name == output.name else name for name in node.output]
            node.input[:] = [inner if name == output.name else name for name in node.input]
        model.graph.node.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT16))
        output.type.tensor_type.elem_type = TensorProto.FLOAT16
    target = folder / path.name
    onnx.save(model, str(target), save_as_external_data=False)
    return target


@functools.cache
def _fp16_outputs_copy(path: Path) -> Path:
    """:func:`_with_fp16_outputs` of ``path``, made once per run in a temporary folder removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="bert-onnx-fp16-outputs-"))
    atexit.register(shutil.rmtree, folder, True)
    return _with_fp16_outputs(path, folder)


def bound_engine(
    model_dir: Path,
    variant: str,
    ids: np.ndarray,
    mask: np.ndarray,
    *,
    device: str = "cuda",
    cuda_graph: bool = False,
    every_output: bool = False,
    pinned: bool = False,
    fp16_outputs: bool = False,
) -> Call:
    """One session with its inputs and outputs bound to fixed buffers for this shape, returning ``last_hidden_state``
    and ``pooler_output`` (every output with ``every_output``) as host arrays; raises RuntimeError with the reason if
    it cannot run (ONNX Runtime refuses a CUDA graph when the session is made, if a node needs a copy to or from the
    host).

    ``cuda_graph``: ONNX Runtime captures a CUDA graph on the first run and replays it. ``pinned``: the outputs are
    bound to page-locked host buffers (allocated by PyTorch, which the GPU machine has; the runtime itself stays
    torch-free), into which ONNX Runtime copies them inside the run, faster than into pageable memory.
    ``fp16_outputs``: the graph casts every output to float16 on the device, halving what crosses to the host.
    ``device="cpu"`` binds host buffers on the CPU provider (what the tests can check without a GPU)."""
    import onnxruntime as ort

    from bert_onnx.manifest import Manifest

    if variant not in Manifest.read(model_dir).variants:
        raise RuntimeError(f"{model_dir} holds no {variant} graph")
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(f"this onnxruntime has no CUDA provider ({', '.join(ort.get_available_providers())})")
    if device != "cuda" and (cuda_graph or pinned):
        raise RuntimeError("CUDA graphs and pinned host buffers need --device cuda")
    try:  # ONNX Runtime and PyTorch raise their own exception types; a row that cannot run says why instead
        return _bound(ort, model_dir, variant, ids, mask, device, cuda_graph, every_output, pinned, fp16_outputs)
    except Exception as exc:
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc


def _bound(
    ort: Any,
    model_dir: Path,
    variant: str,
    ids: np.ndarray,
    mask: np.ndarray,
    device: str,
    cuda_graph: bool,
    every_output: bool,
    pinned: bool,
    fp16_outputs: bool,
) -> Call:
    from bert_onnx import choices

    path = model_dir / choices.CHOICES[variant].file
    if fp16_outputs:
        path = _fp16_outputs_copy(path)
    provider: Any = "CPUExecutionProvider"
    if (
        device == "cuda"
    ):  # TF32 off, as Encoder runs CUDA: the graph rows differ from bert-onnx-VARIANT by the graph only
        provider = ("CUDAExecutionProvider", {"enable_cuda_graph": "1" if cuda_graph else "0", "use_tf32": "0"})
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=[provider])
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    bound = {i.name: ort.OrtValue.ortvalue_from_numpy(feeds[i.name], device, 0) for i in session.get_inputs()}
    binding = session.io_binding()
    for name, value in bound.items():
        binding.bind_ortvalue_input(name, value)
    sizes = {"batch": ids.shape[0], "sequence": ids.shape[1]}
    fetch: dict[str, Callable[[], np.ndarray]] = {}
    for output in session.get_outputs():
        unknown = [d for d in output.shape if not isinstance(d, int) and d not in sizes]
        if unknown:
            raise RuntimeError(f"output {output.name} has axes {unknown} this script cannot size")
        shape = [d if isinstance(d, int) else sizes[d] for d in output.shape]
        dtype = np.float16 if output.type == "tensor(float16)" else np.float32
        if pinned:
            import torch

            host = torch.empty(shape, dtype=torch.float16 if dtype == np.float16 else torch.float32, pin_memory=True)
            binding.bind_output(output.name, "cpu", 0, dtype, shape, host.data_ptr())
            fetch[output.name] = host.numpy  # the bound buffer itself: ONNX Runtime wrote the values there
        else:
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0)
            binding.bind_ortvalue_output(output.name, value)
            fetch[output.name] = value.numpy  # a copy to host memory (from the device on CUDA)
    session.run_with_iobinding(binding)  # with a CUDA graph, this first run captures it
    wanted = list(fetch) if every_output else [name for name in LAST_AND_POOLER if name in fetch]

    def call() -> list[np.ndarray]:
        bound["input_ids"].update_inplace(ids)  # new ids each call, as a server would have, in the same buffer
        session.run_with_iobinding(binding)
        return [fetch[name]() for name in wanted]

    return call


# engine name -> how bound_engine runs it; the name's suffix says which outputs it returns
BOUND = {
    "ort-cuda-graph-{} last+pooler": {"cuda_graph": True},
    "ort-cuda-graph-{}": {"cuda_graph": True, "every_output": True},
    "ort-bound-{} pinned outputs": {"every_output": True, "pinned": True},
    "ort-bound-{} fp16 outputs": {"every_output": True, "fp16_outputs": True},
}


def engines_at(args: argparse.Namespace, ids: np.ndarray, mask: np.ndarray) -> tuple[dict[str, Call], dict[str, str]]:
    """The engines that run here at this shape, and the reason each of the others does not."""
    found: dict[str, Call] = {}
    skipped: dict[str, str] = {}
    builders: dict[str, Callable[[], dict[str, Call]]] = {
        "pytorch": partial(pytorch_engines, args.checkpoint, args.device, ids, mask),
        **{
            f"bert-onnx-{v}": partial(encoder_engines, args.model_dir, args.device, v, ids, mask) for v in args.variants
        },
    }
    for label, build in builders.items():
        try:
            found.update(build())
        except Exception as exc:  # e.g. a variant the folder lacks, or CUDA failing to start
            skipped[label] = f"failed: {type(exc).__name__}: {exc}"
    for variant in args.variants:
        for pattern, how in BOUND.items():
            name = pattern.format(variant)
            try:
                found[name] = bound_engine(args.model_dir, variant, ids, mask, device=args.device, **how)
            except RuntimeError as exc:
                skipped[name] = str(exc)
    for name, call in list(found.items()):  # one call each first: an engine failing here is a row, not a crash
        try:
            call()
        except Exception as exc:
            skipped[name] = f"failed: {type(exc).__name__}: {exc}"
            del found[name]
    return found, skipped


def _last_and_pooler_of(name: str, variants: list[str], torch_label: str) -> str | None:
    """For an engine returning every output, the engine of the same runtime returning last+pooler only."""
    if name.endswith("last+pooler"):
        return None
    if name.startswith("pytorch"):
        return f"{torch_label} last+pooler"
    variant = next(v for v in sorted(variants, key=len, reverse=True) if f"-{v}" in name)
    return f"bert-onnx-{variant} last+pooler"


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from bert_onnx.manifest import Manifest

    vocab = Manifest.read(args.model_dir).vocab_size
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    torch_label = "pytorch-fp16-sdpa" if args.device == "cuda" else "pytorch-fp32-sdpa"
    for batch, sequence in args.shapes:
        ids, mask = harness.random_inputs(rng, vocab, batch, sequence)
        found, skipped = engines_at(args, ids, mask)
        timings = timing.compare(found, args.repeats, warmup=args.warmup, min_seconds=args.min_seconds)
        for name, measured in timings.items():
            reference = f"{torch_label} last+pooler" if name.endswith("last+pooler") else torch_label
            row = {"engine": name, "batch": batch, "sequence": sequence, "device": args.device}
            row.update(harness.timing_row(measured, batch, per="sequences"))
            if reference in timings:
                row["x_pytorch"] = harness.ratio(timings, name, reference)
            own = _last_and_pooler_of(name, args.variants, torch_label)
            if own is not None and own in timings:  # how much every output costs over the two outputs alone
                row["over_last_and_pooler"] = measured.median / timings[own].median
            rows.append(row)
        rows += [{"engine": n, "batch": batch, "sequence": sequence, "skipped": why} for n, why in skipped.items()]
        harness.note(f"{batch} × {sequence}: {len(timings)} engines timed, {len(skipped)} not run")
    return rows


def _shape(text: str) -> tuple[int, int]:
    batch, _, sequence = text.partition("x")
    return int(batch), int(sequence)


def main() -> None:
    parser = harness.arguments(__doc__, checkpoint="required", threads=None, repeats=20)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--variants", nargs="+", default=["fp16", "fp32"], help="graphs to run (default: fp16 fp32)")
    parser.add_argument(
        "--shapes", nargs="+", type=_shape, default=SHAPES, help="BATCHxSEQUENCE (default: %(default)s)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.2, help="shortest measurement (default: 0.2 s)")
    args = parser.parse_args()
    rows = run(args)
    label = (
        f"CUDA graphs and PyTorch SDPA side by side on {args.device}, {args.repeats} interleaved rounds. {args.label}"
    )
    harness.write(args.out, "cuda", {"rows": rows}, harness.table(rows, COLUMNS), label, packages=("torch",))


if __name__ == "__main__":
    main()
