"""bert_onnx.timing: warm-up, interleaving, calibration, the budget and the pauses between candidates, on a fake
clock (nothing is measured)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bert_onnx import timing
from bert_onnx.errors import InvalidValueError
from bert_onnx.timing import Timing

pytestmark = pytest.mark.fast


class FakeClock:
    """A clock that moves only when a candidate says how long its call took; it logs every call."""

    def __init__(self) -> None:
        self.now = 0.0
        self.log: list[str] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.log.append(f"sleep {seconds}")

    def candidate(self, name: str, seconds: float | Callable[[int], float]) -> Callable[[], None]:
        def call() -> None:
            count = self.log.count(name)
            self.now += seconds(count) if callable(seconds) else seconds
            self.log.append(name)

        return call


def test_warm_up_rounds_are_untimed_and_rounds_alternate_their_order() -> None:
    clock = FakeClock()
    # a's first call (the warm-up) is slow; the timed ones are not
    candidates = {"a": clock.candidate("a", lambda n: 5.0 if n == 0 else 1.0), "b": clock.candidate("b", 2.0)}
    result = timing.compare(candidates, rounds=3, warmup=1, settle_seconds=0.5, clock=clock, sleep=clock.sleep)
    calls = [entry for entry in clock.log if not entry.startswith("sleep")]
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rounds 0, 1, 2
    assert result["a"] == Timing((1.0, 1.0, 1.0), calls=1)
    assert result["b"] == Timing((2.0, 2.0, 2.0), calls=1)
    assert list(result) == ["a", "b"]


def test_without_alternation_every_round_runs_in_the_given_order() -> None:
    clock = FakeClock()
    candidates = {name: clock.candidate(name, 1.0) for name in ("a", "b", "c")}
    timing.compare(candidates, rounds=2, warmup=0, alternate=False, settle_seconds=0, clock=clock)
    assert clock.log == ["a", "b", "c", "a", "b", "c"]


def test_a_short_call_is_repeated_until_its_measurement_lasts_min_seconds() -> None:
    clock = FakeClock()
    candidates = {"quick": clock.candidate("quick", 1 / 64), "slow": clock.candidate("slow", 0.5)}
    options = {"min_seconds": 0.5, "settle_seconds": 0.25}  # binary fractions: the fake clock adds them exactly
    result = timing.compare(candidates, rounds=2, warmup=1, clock=clock, sleep=clock.sleep, **options)
    assert result["quick"].calls == 32 and result["slow"].calls == 1
    assert clock.log.count("quick") == 1 + 2 * 32
    # a pause before each warm-up call and measurement, never inside a measurement
    assert clock.log[:5] == ["sleep 0.25", "quick", "sleep 0.25", "slow", "sleep 0.25"]
    assert clock.log[5:37] == ["quick"] * 32
    assert result["quick"].median == 1 / 64  # seconds per call, not per measurement


def test_the_pause_between_candidates_is_outside_every_measurement() -> None:
    clock = FakeClock()
    candidates = {"a": clock.candidate("a", 1.0), "b": clock.candidate("b", 2.0)}
    result = timing.compare(candidates, rounds=2, warmup=1, settle_seconds=0.25, clock=clock, sleep=clock.sleep)
    pause = "sleep 0.25"
    # warm-up a, b; round 0 a, b; round 1 b, a: b follows itself and still gets its pause
    assert clock.log == [pause, "a", pause, "b", pause, "a", pause, "b", pause, "b", pause, "a"]
    assert result["a"] == Timing((1.0, 1.0)) and result["b"] == Timing((2.0, 2.0))
    clock = FakeClock()
    timing.compare({"alone": clock.candidate("alone", 1.0)}, rounds=3, warmup=1, clock=clock, sleep=clock.sleep)
    assert clock.log == ["alone"] * 4  # nothing else runs: no pause


def test_calibration_never_divides_by_a_call_that_took_no_time() -> None:
    clock = FakeClock()
    instant = {"instant": clock.candidate("instant", 0.0)}
    result = timing.compare(instant, rounds=1, min_seconds=1e-5, clock=clock, sleep=clock.sleep)
    assert 10 <= result["instant"].calls <= 11  # 1e-5 s / SHORTEST_CALL, give or take rounding


def test_explicit_call_counts_replace_the_calibration() -> None:
    clock = FakeClock()
    candidates = {"a": clock.candidate("a", 0.01), "b": clock.candidate("b", 0.01)}
    result = timing.compare(candidates, rounds=1, warmup=0, calls={"a": 3, "b": 1}, clock=clock, sleep=clock.sleep)
    assert (result["a"].calls, result["b"].calls) == (3, 1)
    assert clock.log.count("a") == 3


@pytest.mark.parametrize(
    ("budget", "rounds", "expected"),
    [(None, 10, 10), (5.5, 10, 5), (2.5, 10, 3), (100.0, 4, 4), (0.5, 2, 2)],
)
@pytest.mark.parametrize("settle", [0.0, 0.5])  # 1.5 s a round with the pauses: they would fit 3 rounds in 5.5 s
def test_the_budget_fits_rounds_after_the_first_but_keeps_min_rounds(
    budget: float | None, rounds: int, expected: int, settle: float
) -> None:
    clock = FakeClock()
    seen: list[tuple[int, int]] = []
    result = timing.compare(
        {"a": clock.candidate("a", 0.5), "b": clock.candidate("b", 0.5)},  # one round: 1 s
        rounds=rounds,
        warmup=0,
        budget_seconds=budget,
        min_rounds=3,
        on_round=lambda index, planned: seen.append((index, planned)),
        settle_seconds=settle,
        clock=clock,
        sleep=clock.sleep,  # the pauses between candidates do not count against the budget
    )
    assert result["a"].rounds == result["b"].rounds == expected
    assert [index for index, _ in seen] == list(range(expected))
    assert seen[0] == (0, rounds) and seen[-1][1] == expected


def test_statistics_of_a_timing() -> None:
    measured = Timing((0.4, 0.1, 0.3, 0.2, 10.0), calls=2)
    assert measured.median == pytest.approx(0.3)
    assert measured.best == 0.1
    assert measured.rate(6) == pytest.approx(20.0)
    assert measured.p99 == pytest.approx(0.4 + 0.96 * (10.0 - 0.4))  # 99% of the way between the top two
    assert measured.rounds == 5 and measured.calls == 2
    assert timing.percentile([1.0, 2.0, 3.0], 50) == 2.0


def test_no_candidates_give_no_timings() -> None:
    assert timing.compare({}, rounds=2) == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rounds": 0}, "rounds=0"),
        ({"rounds": True}, "rounds=True"),
        ({"warmup": -1}, "warmup=-1"),
        ({"min_seconds": -0.1}, "min_seconds=-0.1"),
        ({"warmup": 0, "min_seconds": 0.1}, "needs warmup >= 1"),
        ({"budget_seconds": 0}, "budget_seconds=0"),
        ({"settle_seconds": -1}, "settle_seconds=-1"),
        ({"calls": {}}, "calls has no count for a"),
        ({"calls": {"a": 0}}, "calls['a']=0"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(options: dict[str, object], message: str) -> None:
    clock = FakeClock()
    with pytest.raises(InvalidValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        timing.compare({"a": clock.candidate("a", 1.0)}, clock=clock, sleep=clock.sleep, **options)  # type: ignore[arg-type]
    assert clock.log == []


def test_a_timing_needs_a_measurement() -> None:
    with pytest.raises(InvalidValueError, match="at least one"):
        Timing(())
