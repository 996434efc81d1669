"""A circuit breaker as a pure state machine over an injected clock: closed, open, half-open."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; after `cooldown_seconds` (or a
    longer wait the dependency asked for) it lets exactly one probe through (half-open): its
    success closes the breaker, its failure opens it again for another cool-down.

    While open, callers are refused at once, so an outage costs them no network round trip
    and costs the dependency no load. It does no I/O and keeps no timers: time comes from
    `clock`, which the tests drive by hand.
    """

    def __init__(
        self,
        *,
        failure_threshold: int,
        cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        probe_timeout_seconds: float = 60.0,
    ) -> None:
        if failure_threshold < 1 or cooldown_seconds <= 0 or probe_timeout_seconds <= 0:
            raise ValueError("failure_threshold >= 1, cooldown and probe timeout > 0")
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self.probe_timeout_seconds = probe_timeout_seconds
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None  # set while open or half-open
        self._probe_started: float | None = None  # set while a half-open probe runs

    @property
    def state(self) -> State:
        if self._open_until is None:
            return "closed"
        if self._probe_started is not None or self._clock() >= self._open_until:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether a call may go out now. In half-open state the first caller becomes the
        probe and must report with `success`, `failure` or `abandon`; others are refused."""
        if self._open_until is None:
            return True
        now = self._clock()
        if self._probe_started is not None:
            # A probe that never reported (its task died unobserved) must not wedge the
            # breaker half-open forever.
            if now - self._probe_started < self.probe_timeout_seconds:
                return False
            self._probe_started = None
        if now < self._open_until:
            return False
        self._probe_started = now
        return True

    def retry_after(self) -> float:
        """Seconds until a call could be allowed again: 0 when closed or when a probe may go."""
        if self._open_until is None:
            return 0.0
        now = self._clock()
        if self._probe_started is not None:
            # The probe's answer decides; ask again after a cool-down at the latest.
            return max(
                0.0,
                min(self.cooldown_seconds, self._probe_started + self.probe_timeout_seconds - now),
            )
        return max(0.0, self._open_until - now)

    def success(self) -> None:
        self._failures = 0
        self._open_until = None
        self._probe_started = None

    def failure(self, retry_after: float | None = None) -> None:
        """A call failed for a reason that says the dependency is unwell (timeout, 5xx, 429).
        `retry_after`: how long the dependency asked us to wait, which then bounds the
        cool-down from below."""
        self._failures += 1
        probing = self._probe_started is not None
        self._probe_started = None
        if probing or self._failures >= self.failure_threshold:
            wait = max(self.cooldown_seconds, retry_after or 0.0)
            self._open_until = self._clock() + wait

    def abandon(self) -> None:
        """The call allowed through was cancelled before it could tell: let another probe go."""
        self._probe_started = None
