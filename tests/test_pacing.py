"""Write pacing per installation, against a real Redis, with a clock the test controls."""

from __future__ import annotations

from redis import Redis

from jobs.github.pacing import GAP, PER_HOUR, PER_MINUTE, RESERVE_HOUR, Pacer
from tests.support import dead_redis


class Clock:
    def __init__(self) -> None:
        self.now = 3600.0 * 278  # the start of an hour: fixed windows do not roll mid-test
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def pacer(redis_url: str, clock: Clock, installation: int = 1) -> Pacer:
    return Pacer(Redis.from_url(redis_url), installation, clock=clock, sleep=clock.sleep)


def test_writes_are_a_second_apart(redis_url):
    clock = Clock()
    p = pacer(redis_url, clock)
    p.essential()
    p.essential()
    assert clock.slept and abs(sum(clock.slept) - GAP) < 1e-6


def test_optional_updates_are_skipped_rather_than_waited_for(redis_url):
    clock = Clock()
    p = pacer(redis_url, clock)
    assert p.optional()
    assert not p.optional(), "a second write within a second must be skipped"
    clock.now += GAP
    assert p.optional()


def test_progress_leaves_a_reserve_of_the_hour_budget(redis_url):
    clock = Clock()
    p = pacer(redis_url, clock)
    allowed = 0
    for _ in range(PER_HOUR):
        clock.now += GAP + 0.01
        allowed += p.optional()
    assert allowed == PER_HOUR - RESERVE_HOUR
    clock.now += GAP
    before = clock.now
    p.essential()  # the reserve is still there for the writes that must happen
    assert clock.now == before


def test_the_hour_budget_is_never_exceeded(redis_url):
    clock = Clock()
    p = pacer(redis_url, clock)
    writes = 0
    for _ in range(PER_HOUR + 50):
        clock.now += GAP + 0.01
        writes += p._try(PER_MINUTE, PER_HOUR) == 0
    assert writes == PER_HOUR


def test_installations_have_separate_budgets(redis_url):
    clock = Clock()
    a, b = pacer(redis_url, clock, 1), pacer(redis_url, clock, 2)
    assert a.optional() and b.optional()


def test_essential_waits_are_bounded(redis_url):
    clock = Clock()
    p = pacer(redis_url, clock)
    for _ in range(PER_MINUTE):
        clock.now += GAP
        p._try(PER_MINUTE, PER_HOUR)
    start = clock.now
    p.essential(limit=10)
    assert clock.now - start <= 10 + 1e-6


def test_without_redis_essential_writes_go_ahead_and_progress_waits():
    clock = Clock()
    dead = dead_redis()
    p = Pacer(dead, 1, clock=clock, sleep=clock.sleep)
    p.essential()  # returns at once: the final comment is never held up by an outage
    assert clock.slept == []
    assert not p.optional()
