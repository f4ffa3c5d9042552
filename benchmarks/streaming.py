"""Does ``bert-onnx embed`` keep memory bounded whatever the input's size? Peak RSS at 10,000 and 100,000 texts.

    python -m benchmarks.streaming --model-dir DIR [--counts 10000 100000] [--words 12]

Writes COUNT lines of real text (Python's documentation paragraphs, cut to ``--words`` words, cycled) and runs
``bert-onnx embed`` on each file in a fresh process that reports its own peak RSS (VmHWM) when done. If memory is
bounded, peak RSS differs between the sizes by little more than the output array (COUNT × dim × 4 bytes is not
held in memory either: chunks are streamed into the output file).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import Column

CHILD = (
    "import sys; from bert_onnx.cli import main; from benchmarks.results_io import vm_hwm_mb; "
    "code = main(sys.argv[1:]); print(f'VmHWM {vm_hwm_mb():.1f}', file=sys.stderr); sys.exit(code)"
)
COLUMNS = [
    Column("texts", "texts", ","),
    Column("seconds", "seconds", ".0f"),
    Column("docs/s", "docs_per_s", ".0f"),
    Column("peak RSS MB", "peak_rss_mb", ".0f"),
    Column("output file MB", "output_mb", ".0f"),
]


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
            harness.note(str(rows[-1]))
    return rows


def main() -> None:
    parser = harness.arguments(__doc__, threads=None)
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--words", type=int, default=12, help="words per text (default: 12)")
    parser.add_argument("--chunk-size", type=int, default=10_000)
    args = parser.parse_args()
    rows = run(args.model_dir, args.counts, args.words, args.chunk_size)
    result = {"model": {"dir": str(args.model_dir), "label": args.label}, "rows": rows}
    harness.write(args.out, "streaming", result, harness.table(rows, COLUMNS), args.label)


if __name__ == "__main__":
    main()
