"""What every benchmark shares: the machine's description and writing one run's numbers and table."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import Any

from bert_onnx import machine as machine_info
from bert_onnx._files import atomic_write_text


def cpu_flags() -> set[str]:
    return machine_info.cpu_flags()


def machine() -> dict[str, Any]:
    return {**machine_info.describe(), "python": platform.python_version()}


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def vm_hwm_mb() -> float:
    """This process's peak RSS. Not ``ru_maxrss``: Linux carries that over from the parent across fork + exec."""
    return _status_mb("VmHWM")


def rss_mb() -> float:
    """This process's resident memory now."""
    return _status_mb("VmRSS")


def write_results(out: Path, name: str, result: dict[str, Any], table: str, label: str) -> Path:
    """Write ``out/NAME-STAMP.json`` (numbers, run time, machine) and ``.md`` (label and table); print the table.

    Returns the JSON file's path.
    """
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    result = {"created": now.isoformat(timespec="seconds"), "machine": machine(), **result}
    atomic_write_text(out / f"{name}-{stamp}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / f"{name}-{stamp}.md", f"{label}\n\n{table}\n")
    print(table)
    return out / f"{name}-{stamp}.json"
