"""Timing that compares ways of running the same work fairly on a shared, noisy machine.

Used by ``bert-onnx tune`` and by every benchmark in ``benchmarks/``. What it does, and why:

- **Warm-up rounds** first, untimed: the first calls of a session allocate, compile and fill caches.
- **Interleaved rounds**: one round times every candidate once, and the order alternates from round to round, so
  a drift of the machine (another process, the clock frequency, a cache the previous candidate warmed) hits every
  candidate alike instead of whichever ran during it.
- **A minimum measurement time**: a call too short to time on its own is repeated within its measurement until the
  measurement lasts about ``min_seconds`` (the count is estimated from the last warm-up call); a measurement's value
  is its seconds per call.
- **Median and 99th percentile** over the rounds: the median resists the occasional slow round, the 99th
  percentile shows it.
- **A time budget**, optionally: when one round proves slow, fewer rounds (never fewer than ``min_rounds``).
- **A pause between candidates** (``settle_seconds``): ONNX Runtime's idle intra-op threads spin for tens of
  milliseconds after a run before they sleep, and on a 2-vCPU machine they take a core from whatever runs next.
  Measured on AVX2 (ONNX Runtime 1.32, 2 threads, one 26.6 ms fp32 GEMM): run right after another session's run it
  took 51.9 ms, 46.5 ms after a 10 ms pause, 27.5 ms after 50 ms. So when there are several candidates, the timing
  sleeps ``settle_seconds`` (0.1 s by default) before every warm-up call and measurement: each candidate is timed
  with the CPUs to itself, as it runs alone in an application, and every one starts with its threads parked (the
  candidate that follows itself where the order turns round gets the pause too).

The clock and the sleep are parameters, so the rules above are tested without measuring anything. Imports only
NumPy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bert_onnx._checks import check_int
from bert_onnx.errors import InvalidValueError

Clock = Callable[[], float]
SHORTEST_CALL = 1e-6  # seconds: a call that seems quicker (a coarse clock) is counted as this when estimating
SETTLE_SECONDS = 0.1  # seconds of quiet before a candidate is measured after another (see the module docstring)


@dataclass(frozen=True)
class Timing:
    """One candidate's measurements: ``seconds`` per call, one value per timed round, each over ``calls`` calls."""

    seconds: tuple[float, ...]
    calls: int = 1

    def __post_init__(self) -> None:
        if not self.seconds:
            raise InvalidValueError("a Timing needs at least one measurement")

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))

    @property
    def p99(self) -> float:
        return percentile(self.seconds, 99)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def rounds(self) -> int:
        return len(self.seconds)

    def rate(self, items: float = 1) -> float:
        """Items per second at the median, for a call that handles ``items`` (texts, sequences, tokens)."""
        return items / self.median


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (linear interpolation between the nearest two)."""
    if not values:
        raise InvalidValueError("percentile of no values")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def calls_for(seconds_per_call: float, min_seconds: float) -> int:
    """How many calls make a measurement last at least ``min_seconds``, given one call's estimated seconds."""
    if min_seconds <= 0:
        return 1
    return max(1, math.ceil(min_seconds / max(seconds_per_call, SHORTEST_CALL)))


def round_order(names: Sequence[str], index: int, alternate: bool = True) -> list[str]:
    """The order of round ``index``: as given, reversed on odd rounds when ``alternate``."""
    return list(names) if not alternate or index % 2 == 0 else list(names)[::-1]


def _measure(call: Callable[[], object], calls: int, clock: Clock) -> float:
    started = clock()
    for _ in range(calls):
        call()
    return (clock() - started) / calls


def _planned_rounds(rounds: int, min_rounds: int, budget_seconds: float | None, round_seconds: float) -> int:
    if budget_seconds is None:
        return rounds
    fitting = int(budget_seconds / max(round_seconds, SHORTEST_CALL))
    return max(min(min_rounds, rounds), min(rounds, fitting))


def _check(
    rounds: int, warmup: int, min_seconds: float, budget_seconds: float | None, min_rounds: int, settle_seconds: float
) -> None:
    check_int("rounds", rounds, 1)
    check_int("warmup", warmup, 0)
    check_int("min_rounds", min_rounds, 1)
    for name, value in (("min_seconds", min_seconds), ("settle_seconds", settle_seconds)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise InvalidValueError(f"{name}={value!r} must be a number >= 0")
    if budget_seconds is not None and (not isinstance(budget_seconds, (int, float)) or budget_seconds <= 0):
        raise InvalidValueError(f"budget_seconds={budget_seconds!r} must be a number > 0, or None")


def compare(
    candidates: Mapping[str, Callable[[], object]],
    rounds: int = 3,
    *,
    warmup: int = 1,
    min_seconds: float = 0.0,
    calls: Mapping[str, int] | None = None,
    alternate: bool = True,
    budget_seconds: float | None = None,
    min_rounds: int = 3,
    on_round: Callable[[int, int], object] | None = None,
    settle_seconds: float = SETTLE_SECONDS,
    clock: Clock = time.perf_counter,
    sleep: Callable[[float], object] = time.sleep,
) -> dict[str, Timing]:
    """Time each of ``candidates`` (name -> a call taking no arguments) in interleaved rounds.

    ``warmup`` untimed rounds come first. Each timed measurement repeats its call ``calls[name]`` times, or, without
    ``calls``, enough times to last ``min_seconds`` (estimated from the last warm-up call, so ``min_seconds`` needs
    ``warmup >= 1``). With ``budget_seconds``, the first timed round's measured time (its calls, not the pauses)
    decides how many of ``rounds`` fit (at least ``min_rounds``). ``on_round(index, planned)`` is called before
    each timed round. With two candidates or more, ``sleep(settle_seconds)`` comes before every warm-up call and
    measurement, outside it, so the threads of whatever ran before go idle. Returns a :class:`Timing` per
    candidate, in the candidates' order.
    """
    _check(rounds, warmup, min_seconds, budget_seconds, min_rounds, settle_seconds)
    names = list(candidates)
    if calls is not None:
        missing = [name for name in names if name not in calls]
        if missing:
            raise InvalidValueError(f"calls has no count for {', '.join(missing)}")
        counts = {name: check_int(f"calls[{name!r}]", calls[name], 1) for name in names}
    elif min_seconds > 0 and warmup == 0:
        raise InvalidValueError("min_seconds > 0 needs warmup >= 1 (the last warm-up call estimates a call's time)")
    settle = settle_seconds if len(names) > 1 else 0

    def measure(name: str, count: int) -> float:
        if settle > 0:
            sleep(settle)
        return _measure(candidates[name], count, clock)

    estimate: dict[str, float] = {}
    for index in range(warmup):
        for name in round_order(names, index, alternate):
            estimate[name] = measure(name, 1)
    if calls is None:
        counts = {name: calls_for(estimate.get(name, 0.0), min_seconds) for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    planned, index = rounds, 0
    while index < planned:
        if on_round is not None:
            on_round(index, planned)
        busy = 0.0  # the round's measured time, without the pauses between candidates
        for name in round_order(names, index, alternate):
            seconds[name].append(measure(name, counts[name]))
            busy += seconds[name][-1] * counts[name]
        if index == 0:
            planned = _planned_rounds(rounds, min_rounds, budget_seconds, busy)
        index += 1
    return {name: Timing(tuple(seconds[name]), counts[name]) for name in names}
