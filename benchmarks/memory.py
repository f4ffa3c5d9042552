"""Does resident memory stay flat over many calls of random shapes? Peak and growth of RSS, per variant.

    python -m benchmarks.memory --model-dir DIR [--variant int8] [--calls 10000]

Each call runs ``Encoder.run`` on random ids of a random shape (batch 1..8, sequence 4..128, all outputs). RSS is
read from /proc after a warm-up of ``calls // 20`` calls and again at the end; growth is reported in percent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.results_io import vm_hwm_mb


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--variant", default=None)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from bert_onnx.runtime import Encoder

    encoder = Encoder(args.model_dir, variant=args.variant, threads=args.threads)
    rng = np.random.default_rng(0)
    warmup = max(1, args.calls // 20)
    after_warmup = 0.0
    for call in range(args.calls):
        batch, sequence = int(rng.integers(1, 9)), int(rng.integers(4, 129))
        ids = rng.integers(1000, encoder.manifest.vocab_size, size=(batch, sequence))
        encoder.run(ids)
        if call + 1 == warmup:
            after_warmup = rss_mb()
    final = rss_mb()
    result = {
        "model_dir": str(args.model_dir),
        "variant": encoder.variant,
        "calls": args.calls,
        "rss_after_warmup_mb": round(after_warmup, 1),
        "rss_final_mb": round(final, 1),
        "growth_percent": round(100 * (final - after_warmup) / after_warmup, 2),
        "peak_rss_mb": round(vm_hwm_mb(), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
