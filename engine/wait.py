"""Waiting, written once: attempts with backoff, and polls with a growing interval.

Shaped like stamina's ``retry_context``: the caller's loop body does one attempt and decides;
the iterator does the waiting between attempts, from one ``RetryPolicy`` and one ``Clock``.

    async for attempt in Attempts(policy, clock):
        outcome = await try_once()
        if outcome.ok:
            return outcome.value
        if attempt.last or not outcome.transient:
            raise outcome.error
        attempt.retry_after = outcome.retry_after   # the server's hint, if any

    async for poll in Polls(clock, interval=1.0, ceiling=10.0, deadline=3600.0):
        status = await ask()
        if status.done:
            return status
    raise TimeoutError  # the deadline passed

Rules: the first attempt and the first poll start at once; a wait is never negative and a poll
never sleeps past the deadline; both are plain async iterators (no generator to finalize), so
``return`` or ``raise`` inside the loop leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.clock import Clock
from engine.retry import RetryPolicy

__all__ = ["Attempt", "Attempts", "Poll", "Polls"]


@dataclass(slots=True)
class Attempt:
    """One attempt: its 1-based ``number``; ``last`` when no retry follows. Set
    ``retry_after`` to the server's wait hint before moving on to the next attempt."""

    number: int
    last: bool
    retry_after: float | None = None


class Attempts:
    """Up to ``policy.max_attempts`` attempts, with the policy's backoff between them."""

    def __init__(self, policy: RetryPolicy, clock: Clock, *, attempts: int | None = None) -> None:
        self._policy = policy
        self._clock = clock
        self._limit = policy.max_attempts if attempts is None else attempts
        self._current: Attempt | None = None

    def __repr__(self) -> str:
        n = self._current.number if self._current else 0
        return f"<Attempts {n}/{self._limit}>"

    def __aiter__(self) -> Attempts:
        return self

    async def __anext__(self) -> Attempt:
        done = self._current
        if done is not None:
            if done.number >= self._limit:
                raise StopAsyncIteration
            await self._clock.sleep(
                self._policy.delay(done.number, self._clock.jitter(), done.retry_after)
            )
        number = 1 if done is None else done.number + 1
        self._current = Attempt(number, number >= self._limit)
        return self._current


@dataclass(frozen=True, slots=True)
class Poll:
    """One poll: its 0-based ``number`` and the seconds ``left`` before the deadline."""

    number: int
    left: float


class Polls:
    """Polls every ``interval`` s, growing by ``growth`` per poll up to ``ceiling``, until
    ``deadline`` s have passed (then the iteration ends)."""

    def __init__(
        self,
        clock: Clock,
        *,
        interval: float,
        ceiling: float,
        deadline: float,
        growth: float = 1.5,
    ) -> None:
        self._clock = clock
        self._step = interval
        self._ceiling = max(interval, ceiling)
        self._growth = growth
        self._deadline = deadline
        self._start = clock.monotonic()
        self._number = -1

    def __repr__(self) -> str:
        return f"<Polls n={self._number + 1} step={self._step:g}s>"

    def __aiter__(self) -> Polls:
        return self

    def left(self) -> float:
        return self._deadline - (self._clock.monotonic() - self._start)

    async def __anext__(self) -> Poll:
        if self._number >= 0:
            left = self.left()
            if left <= 0:
                raise StopAsyncIteration
            await self._clock.sleep(min(self._step, left))
            self._step = min(self._step * self._growth, self._ceiling)
        self._number += 1
        return Poll(self._number, self.left())
