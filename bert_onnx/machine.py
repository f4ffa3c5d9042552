"""This machine: its CPU's model name, the instruction sets that decide which kernels can run, and the installed
versions of the libraries that run them.

Which int8 and bf16 kernels ONNX Runtime, OpenVINO and PyTorch use, and how int8 rounds, depends on VNNI,
AVX512_BF16 and AMX; cloud VMs often hide some of the host CPU's, so what is recorded is what this one shows.
Gates recorded at export and benchmark results both carry this description. Imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
)


def installed_versions(packages: Iterable[str]) -> dict[str, str]:
    """The installed version of each of ``packages`` that is installed, read from package metadata (nothing is
    imported)."""
    versions = {}
    for package in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def _cpuinfo(key: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """Every flag the CPU reports (empty where /proc/cpuinfo is unreadable)."""
    return set((_cpuinfo("flags") or "").split())


def instruction_sets() -> list[str]:
    """The instruction sets of :data:`ISA_FLAGS` this CPU exposes, in that order."""
    flags = cpu_flags()
    return [f for f in ISA_FLAGS if f in flags]


def describe() -> dict[str, Any]:
    """CPU model, logical CPU count and instruction sets."""
    return {
        "cpu": _cpuinfo("model name") or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "isa": instruction_sets(),
    }


# Instruction sets with an int8 dot product that accumulates u8 x s8 products straight into int32 (VPDPBUSD).
# Without one, ONNX Runtime's u8 x s8 kernels add pairs of products in saturating int16 (VPMADDUBSW), which
# clips the large products per-token int8 makes with 8-bit weights. See bert_onnx.export.int8.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def has_vnni() -> bool:
    return bool(cpu_flags() & set(VNNI_FLAGS))


def int8_weight_encodings() -> tuple[str, ...]:
    """The int8 weight encodings (bert_onnx.export.int8.WEIGHT_ENCODINGS) an export tries on this CPU, fastest
    first; each computes exact integers here. With VNNI: signed 8-bit. Without: signed 7-bit (u8 x s8 kernels
    whose int16 pair sums cannot clip), then 8-bit stored unsigned (u8 x u8 kernels: finer, slower)."""
    return ("s8",) if has_vnni() else ("s7", "u8")
