"""The circuit breaker's state machine, driven by a hand-held clock."""

from __future__ import annotations

import pytest

from app.adapters.embedders.circuit_breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


def breaker(clock: Clock, threshold: int = 3, cooldown: float = 5.0) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=threshold, cooldown_seconds=cooldown, clock=clock)


def test_closed_until_threshold_consecutive_failures(clock: Clock) -> None:
    b = breaker(clock)
    b.failure()
    b.failure()
    assert b.state == "closed" and b.allow() and b.retry_after() == 0
    b.failure()
    assert b.state == "open"
    assert not b.allow()
    assert b.retry_after() == pytest.approx(5.0)


def test_a_success_resets_the_count(clock: Clock) -> None:
    b = breaker(clock)
    b.failure()
    b.failure()
    b.success()
    b.failure()
    b.failure()
    assert b.state == "closed"
    b.failure()  # the third since the success: the count had started again at zero
    assert b.state == "open"


def test_one_probe_after_the_cooldown_and_its_success_closes(clock: Clock) -> None:
    b = breaker(clock, threshold=1)
    b.failure()
    clock.now += 4.9
    assert not b.allow()
    assert b.retry_after() == pytest.approx(0.1)
    clock.now += 0.1
    assert b.state == "half_open"
    assert b.retry_after() == 0
    assert b.allow()  # the probe
    assert not b.allow()  # everyone else waits for its answer
    assert b.retry_after() > 0
    b.success()
    assert b.state == "closed" and b.allow()


def test_a_failed_probe_opens_for_another_cooldown(clock: Clock) -> None:
    b = breaker(clock, threshold=2)
    b.failure()
    b.failure()
    clock.now += 5
    assert b.allow()
    b.failure()
    assert b.state == "open"
    assert b.retry_after() == pytest.approx(5.0)


def test_retry_after_from_the_dependency_lengthens_the_cooldown(clock: Clock) -> None:
    b = breaker(clock, threshold=1, cooldown=5)
    b.failure(retry_after=30)
    assert b.retry_after() == pytest.approx(30)
    clock.now += 29
    assert not b.allow()
    clock.now += 1
    assert b.allow()


def test_a_shorter_retry_after_does_not_shorten_the_cooldown(clock: Clock) -> None:
    b = breaker(clock, threshold=1, cooldown=5)
    b.failure(retry_after=1)
    clock.now += 2
    assert not b.allow()


def test_an_abandoned_probe_lets_another_go(clock: Clock) -> None:
    b = breaker(clock, threshold=1)
    b.failure()
    clock.now += 5
    assert b.allow()
    b.abandon()
    assert b.allow()


def test_a_probe_that_never_reports_expires(clock: Clock) -> None:
    b = CircuitBreaker(
        failure_threshold=1, cooldown_seconds=5, clock=clock, probe_timeout_seconds=10
    )
    b.failure()
    clock.now += 5
    assert b.allow()
    clock.now += 9
    assert not b.allow()
    clock.now += 1
    assert b.allow()


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0, cooldown_seconds=1)
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=1, cooldown_seconds=0)
