"""This machine: its CPU's model name, the CPUs this process may use, the instruction sets that decide which kernels
can run, and the installed versions of the libraries that run them.

Which int8 and bf16 kernels ONNX Runtime, OpenVINO and PyTorch use, and how int8 rounds, depends on VNNI,
AVX512_BF16 and AMX; cloud VMs often hide some of the host CPU's, so what is recorded is what this one shows.
Gates recorded at export and benchmark results both carry this description. Imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from bert_onnx._checks import check_optional_int

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


CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path in the cgroup v2 hierarchy (``controller=""``) or in the v1 hierarchy holding
    ``controller``, as ``/proc/self/cgroup`` lists it; "/" where it is not listed."""
    for line in (_read(PROC_CGROUP) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and (controller in parts[1].split(",") if controller else parts[1] == ""):
            return parts[2]
    return "/"


def _cgroup_dirs(mount: Path, controller: str) -> list[Path]:
    """This process's cgroup folder under ``mount`` and every folder above it up to ``mount``: a quota anywhere up
    the tree binds. (In a container the listed path may not exist under its own mount; then ``mount`` is its.)"""
    inner = mount / _own_cgroup(controller).lstrip("/")
    return [inner, *(folder for folder in inner.parents if folder == mount or mount in folder.parents)]


def _whole_cpus(quota: str | None, period: str | None) -> int | None:
    """A quota of ``quota`` microseconds of CPU time per ``period`` as whole CPUs, rounded up (1.5 CPUs' time: 2
    threads can use it); ``None`` for no quota ("max", -1) or an unreadable one."""
    if quota and period and quota.isdigit() and period.isdigit() and int(period) > 0:
        return max(1, math.ceil(int(quota) / int(period)))
    return None


def _cgroup_quota() -> int | None:
    """The CPU quota of this process's cgroup (a container's ``--cpus``) in whole CPUs, or ``None`` where there is
    none: cgroup v2's ``cpu.max`` ("max 100000", "150000 100000"), else cgroup v1's ``cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us``; the smallest up the tree."""
    limits = []
    for folder in _cgroup_dirs(CGROUP_ROOT, ""):
        quota, _, period = (_read(folder / "cpu.max") or "").partition(" ")
        limits.append(_whole_cpus(quota, period))
    if not any(limits):
        v1 = _cgroup_dirs(CGROUP_ROOT / "cpu", "cpu")
        limits = [_whole_cpus(_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")) for d in v1]
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (``taskset``, a container's cpuset), lowered to its
    cgroup's CPU quota (a container's ``--cpus``) where that is smaller; ``os.cpu_count()`` where the platform has
    no affinity mask. What a measurement and a thread count depend on: ``os.cpu_count()`` counts the host's CPUs,
    however few of them this process may use."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(count, quota) if quota is not None else count)


# More threads than this many per usable CPU only contend for the same CPUs, and ONNX Runtime creates its whole pool
# at load: thousands of threads take it minutes. Relative to the CPUs, not a fixed number, so that it also catches a
# setting copied from a larger machine.
THREADS_PER_CPU = 4


def check_threads(threads: object) -> int | None:
    """``threads`` as ``Encoder`` and every backend take it: ``None`` (the runtime's own choice) or an int from 1 to
    :data:`THREADS_PER_CPU` times :func:`usable_cpus`; anything else raises ``InvalidValueError`` naming it."""
    cpus = usable_cpus()
    return check_optional_int(
        "threads",
        threads,
        1,
        THREADS_PER_CPU * cpus,
        f"or None; at most {THREADS_PER_CPU} per CPU this process may use, of which there are {cpus}: more threads "
        "only contend for them",
    )


def describe() -> dict[str, Any]:
    """CPU model, the CPUs this process may use (:func:`usable_cpus`) and instruction sets."""
    return {
        "cpu": _cpuinfo("model name") or platform.processor() or platform.machine(),
        "cpus": usable_cpus(),
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
