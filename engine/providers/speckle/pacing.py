"""Pacing from the server's rate-limit headers: slow down before the server answers 429.

A Speckle server answers each request within its limits with ``X-RateLimit-Remaining``, the
points left in the current window (speckle-server ``modules/core/rest/ratelimiter.ts``);
``POST /graphql`` gets 50 a second by default (``modules/core/utils/ratelimiter.ts``,
``RATELIMIT_POST_GRAPHQL``). A refused request is HTTP 429 with ``Retry-After`` (seconds,
fractional) and ``X-RateLimit-Reset``; ``engine.graphql`` waits that out (up to the policy's
``retry_after_cap``).

Rules (``Pacer.reserve`` is pure bookkeeping; only ``pause`` waits, on the services' clock):
- no header seen, or the last one older than one window: no pause;
- more than ``low`` points left: no pause;
- at or below ``low``: what is left is spread over one window: requests go one slot apart,
  a slot being ``window / (left + 1)`` seconds, so the points left last at least the window;
- every request sent counts against the estimate until the next answer says otherwise, so
  files sending at once space out instead of all reading the same number.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.clock import Clock

__all__ = ["Pacer"]


class Pacer:
    """One per Speckle server and uploader: shared by every request to that server.

    low:    points left at or below which requests are spaced out;
    window: seconds of the server's rate-limit window (the public default is one second).
    """

    def __init__(self, clock: Clock, *, low: int = 10, window: float = 1.0) -> None:
        self._clock = clock
        self._low = low
        self._window = window
        self._left: int | None = None
        self._at = 0.0
        self._next = 0.0  # when the next held-back request may go
        self.paused = 0  # requests that were held back (for reports and tests)

    def __repr__(self) -> str:
        return f"<Pacer left={self._left} paused={self.paused}>"

    def seen(self, headers: Mapping[str, str]) -> None:
        """An answer's headers: remember ``X-RateLimit-Remaining`` when it is there."""
        value = headers.get("X-RateLimit-Remaining")
        if value is None:
            return
        try:
            self._left = max(0, int(float(value)))
        except ValueError:
            return
        self._at = self._clock.monotonic()

    def reserve(self) -> float:
        """Seconds to hold the next request back; it takes the next free slot (requests of
        several files are staggered, not held the same time and sent together)."""
        now = self._clock.monotonic()
        if self._left is None or now - self._at > self._window:
            self._left = None
            return 0.0
        left = self._left
        self._left = max(0, left - 1)
        if left > self._low:
            return 0.0
        start = max(now, self._next)
        self._next = start + self._window / (left + 1)
        return start - now

    async def pause(self) -> None:
        delay = self.reserve()
        if delay > 0:
            self.paused += 1
            await self._clock.sleep(delay)
