"""Time, injectable: no test waits in real time."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...  # aware, UTC
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock for tests: `sleep` advances time instead of waiting."""

    def __init__(self, start: datetime | None = None):
        self._t = (start or datetime(2026, 1, 5, 12, 0, tzinfo=UTC)).timestamp()
        self.slept: list[float] = []

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._t, UTC)

    def monotonic(self) -> float:
        return self._t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self._t += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self._t += seconds


SYSTEM_CLOCK = SystemClock()
