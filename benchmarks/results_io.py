"""What every benchmark shares: the machine's description and writing one run's numbers and table."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from bert_onnx._files import atomic_write_text


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version()}


def write_results(out: Path, name: str, result: dict[str, Any], table: str, label: str) -> None:
    """Write ``out/NAME-STAMP.json`` (numbers, run time, machine) and ``.md`` (label and table); print the table."""
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    result = {"created": now.isoformat(timespec="seconds"), "machine": machine(), **result}
    atomic_write_text(out / f"{name}-{stamp}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / f"{name}-{stamp}.md", f"{label}\n\n{table}\n")
    print(table)
