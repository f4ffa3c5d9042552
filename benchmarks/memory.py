"""Does resident memory stay flat over many calls of random shapes? Peak and growth of RSS, per variant.

    python -m benchmarks.memory --model-dir DIR [--variant int8] [--calls 10000]

Each call runs ``Encoder.run`` on random ids of a random shape (batch 1..8, sequence 4..128, all outputs). RSS is
read from /proc after a warm-up of ``calls // 20`` calls and again at the end; growth is reported in percent.
Prints the row as JSON and writes a results file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import Column
from benchmarks.results_io import rss_mb, vm_hwm_mb

COLUMNS = [
    Column("variant", "variant"),
    Column("calls", "calls"),
    Column("RSS after warm-up MB", "rss_after_warmup_mb", ".1f"),
    Column("RSS at the end MB", "rss_final_mb", ".1f"),
    Column("growth %", "growth_percent", ".2f"),
    Column("peak RSS MB", "peak_rss_mb", ".1f"),
]


def run(model_dir: Path, variant: str | None, calls: int, threads: int | None) -> dict[str, Any]:
    from bert_onnx.runtime import Encoder

    encoder = Encoder(model_dir, variant=variant, threads=threads)
    rng = np.random.default_rng(0)
    warmup = max(1, calls // 20)
    after_warmup = 0.0
    for call in range(calls):
        batch, sequence = int(rng.integers(1, 9)), int(rng.integers(4, 129))
        ids = rng.integers(1000, encoder.manifest.vocab_size, size=(batch, sequence))
        encoder.run(ids)
        if call + 1 == warmup:
            after_warmup = rss_mb()
    final = rss_mb()
    return {
        "model_dir": str(model_dir),
        "variant": encoder.variant,
        "threads": threads,
        "calls": calls,
        "rss_after_warmup_mb": round(after_warmup, 1),
        "rss_final_mb": round(final, 1),
        "growth_percent": round(100 * (final - after_warmup) / after_warmup, 2),
        "peak_rss_mb": round(vm_hwm_mb(), 1),
    }


def main() -> None:
    parser = harness.arguments(__doc__, threads="runtime")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--calls", type=int, default=10_000)
    args = parser.parse_args()
    row = run(args.model_dir, args.variant, args.calls, args.threads)
    print(json.dumps(row))
    result = {"model": {"dir": str(args.model_dir), "label": args.label}, "rows": [row]}
    harness.write(args.out, "memory", result, harness.table([row], COLUMNS), args.label)


if __name__ == "__main__":
    main()
