"""The one injected clock: what waits, what tells the time and what rolls the jitter dice.

Everything in the engine and the providers that sleeps, reads a monotonic or a wall clock, or
draws a random backoff goes through a ``Clock``, so a test swaps one object (``FakeClock``:
virtual time, no real waiting, seeded dice) instead of three ``sleep=`` arguments.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic seconds, wall time in UTC, a wait, and a source of uniform jitter."""

    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...

    def jitter(self) -> float:
        """A uniform draw in [0, 1)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``datetime.now(UTC)``, ``anyio.sleep``."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def __repr__(self) -> str:
        return "<SystemClock>"

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def jitter(self) -> float:
        return self._rng.random()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class FakeClock:
    """Virtual time for tests: ``sleep`` advances the clock at once (yielding to the loop),
    ``slept`` records every wait asked for, and the dice are seeded."""

    def __init__(self, *, seed: int = 0, start: datetime | None = None) -> None:
        self._rng = random.Random(seed)
        self._elapsed = 0.0
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self.slept: list[float] = []

    def __repr__(self) -> str:
        return f"<FakeClock t={self._elapsed:.3f}s sleeps={len(self.slept)}>"

    def monotonic(self) -> float:
        return self._elapsed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)

    def jitter(self) -> float:
        return self._rng.random()

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.slept.append(seconds)
        self._elapsed += seconds
        await anyio.lowlevel.checkpoint()
