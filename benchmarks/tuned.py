"""Does the tuned default pay off? ``Encoder(DIR)`` against every choice run by hand, on real text.

    python -m benchmarks.tuned DIR [DIR ...] [--tune] [--rounds 5] [--texts 256]

With ``--tune`` it first runs ``bert-onnx tune`` on each folder (and reports how long that took). Then, in one
process, interleaved round by round, it times ``Encoder(DIR).embed`` (whatever the profile picked) and each choice
that passes its gate here, opened explicitly, on real paragraphs from the folder's ``gates.npz`` that tune did not
time (its sample is at most the first 64). Reported: texts/s per choice (median over rounds) and the ratio of the
default to the fastest choice measured here; the target is >= 0.9.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import Column
from bert_onnx import interface, timing
from bert_onnx.gates import References
from bert_onnx.runtime import Encoder

COLUMNS = [
    Column("model", lambda r: f"{r['layers']} layers × {r['hidden']}"),
    Column("tune took", lambda r: None if r["tune_seconds"] is None else f"{r['tune_seconds']:.0f} s"),
    Column("picked", "default_choice"),
    Column("default texts/s", lambda r: r["texts_per_second"]["default"], ".1f"),
    Column("fastest by hand", "fastest_by_hand"),
    Column("its texts/s", lambda r: r["texts_per_second"][r["fastest_by_hand"]], ".1f"),
    Column("default / fastest", "default_over_fastest", ".3f"),
]


def run(folder: Path, rounds: int, count: int, tune: bool) -> dict[str, Any]:
    from bert_onnx import tuning

    tune_seconds = None
    if tune:
        started = time.perf_counter()
        tuning.tune(folder)
        tune_seconds = time.perf_counter() - started
    texts = list(References.load(folder / interface.GATES_FILE).texts[64 : 64 + count])
    default = Encoder(folder)
    encoders: dict[str, Encoder] = {"default": default}
    load_seconds: dict[str, float] = {}  # what opening each choice costs: the price of any probe at load time
    for outcome in tuning.verify(folder):
        if outcome.passed:
            started = time.perf_counter()
            encoders[outcome.name] = tuning.open_choice(folder, outcome.name)
            load_seconds[outcome.name] = time.perf_counter() - started
    timings = timing.compare({name: partial(encoder.embed, texts) for name, encoder in encoders.items()}, rounds)
    medians = {name: measured.rate(len(texts)) for name, measured in timings.items()}
    fastest = max((n for n in medians if n != "default"), key=medians.__getitem__)
    return {
        "folder": str(folder),
        "layers": default.num_layers,
        "hidden": default.hidden_size,
        "default_choice": default.choice,
        "picked_by": default.describe()["picked_by"],
        "tune_seconds": tune_seconds,
        "texts": len(texts),
        "rounds": rounds,
        "texts_per_second": medians,
        "load_seconds": load_seconds,
        "fastest_by_hand": fastest,
        "default_over_fastest": medians["default"] / medians[fastest],
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [harness.table(rows, COLUMNS), "", "texts/s of every choice (median of the rounds):", ""]
    for r in rows:
        per = ", ".join(
            f"{name} {value:.1f} (opens in {r['load_seconds'][name]:.2f} s)"
            for name, value in r["texts_per_second"].items()
            if name != "default"
        )
        lines.append(f"- {r['layers']} layers × {r['hidden']}: {per}")
    return "\n".join(lines)


def main() -> None:
    parser = harness.arguments(__doc__, model_dir=None, threads=None, label=False)
    parser.add_argument("folders", nargs="+", type=Path, metavar="DIR")
    parser.add_argument("--tune", action="store_true", help="run bert-onnx tune on each folder first")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts", type=int, default=256)
    args = parser.parse_args()
    rows = [run(folder, args.rounds, args.texts, args.tune) for folder in args.folders]
    label = (
        f"Encoder(DIR) after bert-onnx tune vs each choice by hand, real paragraphs, {args.rounds} interleaved "
        "rounds after a warm-up, default threads"
    )
    harness.write(args.out, "tuned", {"rows": rows}, markdown(rows), label)


if __name__ == "__main__":
    main()
