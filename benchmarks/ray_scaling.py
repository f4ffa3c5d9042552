"""Ray Data on one machine against a single process: docs/s per CPU with 1 and 2 actors.

    python -m benchmarks.ray_scaling --model-dir DIR [--texts 5000] [--variant fp32]

Single-process rows run ``Encoder.embed`` with 1 and with all CPUs as ONNX Runtime threads. Ray rows start a local
cluster with all CPUs and run ``map_batches(RayEmbedder)`` with 1 actor × 1 CPU, 2 actors × 1 CPU and 1 actor ×
2 CPUs, ``--rows-per-call`` texts per call (256: enough for length sorting to pay, small enough that both
actors get a fair share of a short job; with 1,000 the 1,254 texts split 1,000 / 254 and one actor idles). Every
Ray run includes starting its actors and loading the model in them (Ray Data creates an actor pool per
execution), which a long job amortises and this short one does not. Best of ``--repeats``. Target: Ray reaches
>= 80% of single-process docs/s per CPU.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import Column
from bert_onnx import machine, timing

COLUMNS = [
    Column("engine", "engine"),
    Column("CPUs", "cpus"),
    Column("docs/s", "docs_per_s", ".1f"),
    Column("docs/s per CPU", "docs_per_s_per_cpu", ".1f"),
    Column("per CPU vs single process", "per_cpu_vs_single_process", ".2f"),
]


def run(model_dir: Path, count: int, variant: str | None, repeats: int, rows_per_call: int) -> list[dict[str, Any]]:
    import ray

    from bert_onnx.export.corpus import documentation_paragraphs
    from bert_onnx.integrations.ray import RayEmbedder
    from bert_onnx.runtime import Encoder

    paragraphs = list(documentation_paragraphs())
    texts = [paragraphs[i % len(paragraphs)] for i in range(count)]  # cycled: a longer job amortises start-up
    cpus = machine.usable_cpus()
    rows: list[dict[str, Any]] = []

    def record(engine: str, used_cpus: int, measured: timing.Timing) -> None:
        seconds = measured.best  # best of the repeats: start-up noise only ever makes a run slower
        docs_per_s = len(texts) / seconds
        rows.append(
            {
                "engine": engine,
                "cpus": used_cpus,
                "texts": len(texts),
                "seconds": seconds,
                "docs_per_s": docs_per_s,
                "docs_per_s_per_cpu": docs_per_s / used_cpus,
            }
        )
        harness.note(str(rows[-1]))

    for threads in sorted({1, cpus}):
        encoder = Encoder(model_dir, threads=threads, variant=variant)
        encoder.embed(texts[:64])  # a short warm-up; the timed calls embed every text
        measured = timing.compare({"embed": partial(encoder.embed, texts)}, repeats, warmup=0)["embed"]
        record(f"single process, {threads} thread(s)", threads, measured)

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        items = [{"id": i, "text": t} for i, t in enumerate(texts)]
        for actors, per_actor in ((1, 1), (2, 1), (1, 2)):
            if actors * per_actor > cpus:
                continue
            dataset = ray.data.from_items(items).map_batches(
                RayEmbedder,
                fn_constructor_kwargs={"model_dir": str(model_dir), "variant": variant},
                batch_size=rows_per_call,
                batch_format="numpy",
                concurrency=actors,
                num_cpus=per_actor,
            )

            def materialize(dataset: Any = dataset) -> None:
                assert dataset.materialize().count() == len(texts)

            # no warm-up: every Ray run starts its actors and loads the model in them, which is what is measured
            measured = timing.compare({"ray": materialize}, repeats, warmup=0)["ray"]
            record(f"ray, {actors} actor(s) × {per_actor} CPU", actors * per_actor, measured)
    finally:
        ray.shutdown()
    base = {r["cpus"]: r["docs_per_s_per_cpu"] for r in rows if r["engine"].startswith("single")}
    for r in rows:
        r["per_cpu_vs_single_process"] = r["docs_per_s_per_cpu"] / base.get(r["cpus"], base[1])
    return rows


def main() -> None:
    parser = harness.arguments(__doc__, threads=None, repeats=2)
    parser.add_argument("--texts", type=int, default=5000, help="documentation paragraphs, cycled (default: 5000)")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--rows-per-call", type=int, default=256, help="map_batches batch_size (default: 256)")
    args = parser.parse_args()
    rows = run(args.model_dir, args.texts, args.variant, args.repeats, args.rows_per_call)
    result = {"model": {"dir": str(args.model_dir), "label": args.label, "variant": args.variant}, "rows": rows}
    harness.write(args.out, "ray", result, harness.table(rows, COLUMNS), args.label, ["ray"])


if __name__ == "__main__":
    main()
