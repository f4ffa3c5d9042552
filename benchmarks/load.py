"""Load + first call, and peak RSS, per variant, in fresh processes, with the optimized-graph cache off, cold, warm.

    python -m benchmarks.load --model-dir DIR [--repeats 3]

Each measurement is a new Python process that imports the runtime, creates ``Encoder(DIR, variant=...)`` and
embeds 'I love Korea' once; it reports the seconds from before the import to after the call, and its VmHWM.
"cold" starts with an empty session cache (the load writes it), "warm" finds it filled, "off" passes
``session_cache=False``. Medians over ``--repeats`` processes.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import Column

CHILD = """
import json, sys, time
started = time.perf_counter()
from bert_onnx.runtime import Encoder
from benchmarks.results_io import vm_hwm_mb
folder, variant, cache = sys.argv[1], sys.argv[2], sys.argv[3]
encoder = Encoder(folder, variant=variant, session_cache=False if cache == "off" else cache)
encoder.embed(["I love Korea"])
print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mb": vm_hwm_mb()}))
"""
COLUMNS = [
    Column("variant", "variant"),
    Column("session cache", "session_cache"),
    Column("load + first call s", "load_and_first_call_s", ".2f"),
    Column("peak RSS MB", "peak_rss_mb", ".0f"),
]


def _once(model_dir: Path, variant: str, cache: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(model_dir), variant, cache], capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(model_dir: Path, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for variant in harness.cpu_graphs(model_dir):
        samples: dict[str, list[dict[str, float]]] = {"off": [], "cold": [], "warm": []}
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as cache:  # cold writes the cache that warm then reads
                samples["off"].append(_once(model_dir, variant, "off"))
                samples["cold"].append(_once(model_dir, variant, cache))
                samples["warm"].append(_once(model_dir, variant, cache))
        for mode, runs in samples.items():
            rows.append(
                {
                    "variant": variant,
                    "session_cache": mode,
                    "repeats": repeats,
                    "load_and_first_call_s": statistics.median(r["seconds"] for r in runs),
                    "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
                }
            )
            harness.note(str(rows[-1]))
    return rows


def main() -> None:
    parser = harness.arguments(__doc__, threads=None, repeats=3)
    args = parser.parse_args()
    rows = run(args.model_dir, args.repeats)
    result = {"model": {"dir": str(args.model_dir), "label": args.label}, "rows": rows}
    harness.write(args.out, "load", result, harness.table(rows, COLUMNS), args.label)


if __name__ == "__main__":
    main()
