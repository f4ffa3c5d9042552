"""Does ``bert-onnx embed`` keep memory bounded whatever the input's size? Peak RSS at 10,000 and 100,000 texts.

    python -m benchmarks.streaming --model-dir DIR [--counts 10000 100000] [--words 12]

Writes COUNT lines of real text (Python's documentation paragraphs, cut to ``--words`` words, cycled) and runs
``bert-onnx embed`` on each file in a fresh process that reports its own peak RSS (VmHWM) when done. If memory is
bounded, peak RSS differs between the sizes by little more than the output array (COUNT × dim × 4 bytes is not
held in memory either: chunks are streamed into the output file).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.results_io import write_results

CHILD = (
    "import sys; from bert_onnx.cli import main; from benchmarks.results_io import vm_hwm_mb; "
    "code = main(sys.argv[1:]); print(f'VmHWM {vm_hwm_mb():.1f}', file=sys.stderr); sys.exit(code)"
)


def run(model_dir: Path, counts: list[int], words: int, chunk_size: int) -> list[dict[str, Any]]:
    from bert_onnx.export.corpus import documentation_paragraphs

    texts = [" ".join(p.split()[:words]) for p in documentation_paragraphs()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            source = Path(tmp) / f"texts-{count}.txt"
            source.write_text("".join(texts[i % len(texts)] + "\n" for i in range(count)), encoding="utf-8")
            out = Path(tmp) / f"out-{count}.npy"
            args = ["embed", str(model_dir), "--input", str(source), "--output", str(out), "--quiet"]
            args += ["--chunk-size", str(chunk_size), "--pooling", "mean"]
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - started
            peak = float(done.stderr.strip().splitlines()[-1].split()[1])
            rows.append(
                {
                    "texts": count,
                    "seconds": seconds,
                    "docs_per_s": count / seconds,
                    "peak_rss_mb": peak,
                    "output_mb": out.stat().st_size / 2**20,
                }
            )
            out.unlink()
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| texts | seconds | docs/s | peak RSS MB | output file MB |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['texts']:,} | {r['seconds']:.0f} | {r['docs_per_s']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['output_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--words", type=int, default=12, help="words per text (default: 12)")
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = run(args.model_dir, args.counts, args.words, args.chunk_size)
    result = {"model": {"dir": str(args.model_dir), "label": args.label}, "rows": rows}
    write_results(args.out, "streaming", result, markdown(rows), args.label)


if __name__ == "__main__":
    main()
