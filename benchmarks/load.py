"""Load + first call, and peak RSS, per variant, in fresh processes, with the optimized-graph cache off, cold, warm.

    python -m benchmarks.load --model-dir DIR [--repeats 3]

Each measurement is a new Python process that imports the runtime, creates ``Encoder(DIR, variant=...)`` and
embeds 'I love Korea' once; it reports the seconds from before the import to after the call, and its VmHWM.
"cold" starts with an empty session cache (the load writes it), "warm" finds it filled, "off" passes
``session_cache=False``. Medians over ``--repeats`` processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.results_io import write_results

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


def _once(model_dir: Path, variant: str, cache: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(model_dir), variant, cache], capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(model_dir: Path, repeats: int) -> list[dict[str, Any]]:
    from bert_onnx.manifest import Manifest

    rows = []
    for variant, record in Manifest.read(model_dir).variants.items():
        if "cpu" not in record.devices:
            continue
        samples: dict[str, list[dict[str, float]]] = {"off": [], "cold": [], "warm": []}
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as cache:
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
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | session cache | load + first call s | peak RSS MB |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['session_cache']} | {r['load_and_first_call_s']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = run(args.model_dir, args.repeats)
    write_results(
        args.out,
        "load",
        {"model": {"dir": str(args.model_dir), "label": args.label}, "rows": rows},
        markdown(rows),
        args.label,
    )


if __name__ == "__main__":
    main()
