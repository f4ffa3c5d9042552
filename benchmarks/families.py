"""Every model family's export and variant gates, measured here: the numbers behind README's table of families.

    python -m benchmarks.families [--checkpoints DIR] [--keys roberta distilbert ...]

Exports each offline family checkpoint (``scripts/checkpoints_families.py``: RANDOM weights, real tokenizers) with
every variant this CPU can gate (fp32, opt, int8, OpenVINO fp32, and OpenVINO bf16 where the CPU has bf16 units)
and records, per family: the graph's inputs and outputs, fp32's largest max abs diff to PyTorch over all outputs,
the operators ONNX Runtime fused for ``opt`` and its largest diff, the int8 gate's values and how many FFN
down-projections it kept in float, and OpenVINO's gates. An export that fails a gate is recorded with the failure.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import harness

KEYS = {
    "roberta": "tiny-random-roberta",
    "xlm-roberta": "tiny-random-xlm-roberta",
    "distilbert": "tiny-random-distilbert",
    "albert": "tiny-random-albert",
    "electra": "tiny-random-electra",
    "mpnet": "tiny-random-mpnet",
    "deberta-v2": "tiny-random-deberta-v2",
    "deberta-v3": "tiny-random-deberta-v3",
    "modernbert": "tiny-random-modernbert",
    "bert-generic-tokenizer": "tiny-random-bert-generic-tokenizer",
    "roberta-base": "roberta-base-arch-random-weights",
}


def variants() -> tuple[str, ...]:
    from bert_onnx.runtime.openvino_backend import cpu_capabilities

    return ("fp32", "opt", "int8", "openvino-fp32", *(("openvino-bf16",) if "BF16" in cpu_capabilities() else ()))


def measure(checkpoint: Path, folder: Path) -> dict[str, Any]:
    from bert_onnx.export import export_model
    from bert_onnx.export.errors import ExportError

    try:
        manifest = export_model(str(checkpoint), folder, variants=variants(), log=lambda message: None)
    except ExportError as exc:
        return {"error": str(exc).splitlines()[0]}
    records = manifest.variants
    int8 = records["int8"]
    kept = re.search(r"(\d+) FFN down-projection", int8.gate)
    row: dict[str, Any] = {
        "family": manifest.family,
        "inputs": list(manifest.inputs),
        "outputs": len(manifest.outputs),
        "pooler": manifest.model_family.pooler,
        "max_length": manifest.max_length,
        "fp32_max_abs_diff": max(o.max_abs_diff for o in manifest.parity.outputs),
        "opt_max_abs_diff": max(c.value for c in records["opt"].checks),
        "opt_fused": manifest.extra["opt_fused_operators"],
        "int8": {c.name: c.value for c in int8.checks},
        "int8_float_down_projections": int(kept.group(1)) if kept else None,
        "openvino_fp32_max_abs_diff": max(c.value for c in records["openvino-fp32"].checks),
    }
    if "openvino-bf16" in records:
        row["openvino_bf16_min_cosine"] = min(c.value for c in records["openvino-bf16"].checks)
    return row


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| checkpoint | family | inputs | outputs | fp32 max diff | opt max diff | opt fused | int8 mean / min cos, "
        "top-10 (float FFN) | OpenVINO fp32 max diff | OpenVINO bf16 min cos |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in rows.items():
        if "error" in r:
            lines.append(f"| {key} | failed: {r['error']} |")
            continue
        fused = ", ".join(f"{name} {count}" for name, count in sorted(r["opt_fused"].items()))
        q = r["int8"]
        int8 = f"{q['mean cosine']:.4f} / {q['min cosine']:.4f}, {q['top-10 agreement']:.3f}"
        int8 += f" ({r['int8_float_down_projections']})"
        bf16 = f"{r['openvino_bf16_min_cosine']:.5f}" if "openvino_bf16_min_cosine" in r else "–"
        lines.append(
            f"| {key} | {r['family']} | {', '.join(r['inputs'])} | {r['outputs']}{' (pooler)' if r['pooler'] else ''} "
            f"| {r['fp32_max_abs_diff']:.1e} | {r['opt_max_abs_diff']:.1e} | {fused} | {int8} "
            f"| {r['openvino_fp32_max_abs_diff']:.1e} | {bf16} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, default=Path(".cache/checkpoints"))
    parser.add_argument("--keys", nargs="+", default=list(KEYS), choices=list(KEYS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.keys:
            rows[key] = measure(args.checkpoints / KEYS[key], Path(tmp) / key)
            print(key, "done", flush=True)
    label = (
        "Every family's export gates (RANDOM weights, real tokenizers; scripts/checkpoints_families.py), "
        f"variants {', '.join(variants())}"
    )
    harness.write(args.out, "families", {"variants": list(variants()), "rows": rows}, markdown(rows), label)


if __name__ == "__main__":
    main()
