"""The Speckle server's rate limiter, as a pure function of a clock, and its HTTP 429.

Rules this module keeps (``packages/server/modules/core/utils/ratelimiter.ts`` and
``modules/core/rest/ratelimiter.ts``, with ``rate-limiter-flexible`` 2.4.1, the version pinned in
the server's ``yarn.lock``):

* **Actions.** ``POST /graphql`` has its own limits (``RATELIMIT_POST_GRAPHQL`` 50 a second,
  ``RATELIMIT_BURST_POST_GRAPHQL`` 200 a minute); every other route falls under
  ``ALL_REQUESTS`` (500 a second, 2000 a minute). Each action counts per *source*: the token
  after its first 10 characters (``getSourceFromRequest``: the limiter runs before the token is
  checked, so an invalid token is counted too) or, without a token, the client's address.
* **One limiter** (``RateLimiterRedis`` with ``inMemoryBlockOnConsumed = points`` and
  ``inMemoryBlockDuration = duration``) is a fixed window per source: the first request opens a
  window of ``duration``; a request beyond ``points`` in it is refused and blocks the source for
  a whole ``duration`` from then (``msBeforeNext`` = the duration); while blocked, requests are
  refused with the time left and not counted.
* **Bursty** (``BurstyRateLimiter``): a request the regular limiter refuses is charged to the
  burst limiter instead; it passes if the burst allows it (``remainingPoints`` then 0, the
  regular limiter's), else it is refused with the smaller of the two waits.
* **The 429** (``addRateLimitHeadersToResponseFactory``, ``defaultErrorHandler``): body
  ``{"error": {"message": …, "code": "RATE_LIMIT_ERROR"}}``, ``Retry-After`` = ms / 1000 (may be
  fractional), ``X-RateLimit-Reset`` = now + wait as an ISO time, ``X-Speckle-Meditation``;
  a request that passes gets ``X-RateLimit-Remaining``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from aiohttp import web

from engine.sandbox.responses import json_response
from engine.sandbox.speckle.errors import rate_limited_body

__all__ = ["GRAPHQL_ACTION", "Outcome", "RateLimiter", "rate_limited_response", "source_of"]

GRAPHQL_ACTION: Final = "POST /graphql"
ALL_REQUESTS: Final = "ALL_REQUESTS"
_ALL_REQUESTS_LIMITS: Final = (500, 2000)  # RATELIMIT_ALL_REQUESTS, RATELIMIT_BURST_ALL_REQUESTS


@dataclass(frozen=True, slots=True)
class Outcome:
    """One consume: ``allowed``, the points left (when allowed) and the wait (ms, when not)."""

    allowed: bool
    remaining: int
    ms_before_next: int


@dataclass(slots=True)
class _Window:
    start: float
    count: int = 0
    blocked_until: float = 0.0


class _FixedWindow:
    """``points`` per ``duration`` seconds per key, blocking for ``duration`` when exceeded."""

    def __init__(self, points: int, duration: float) -> None:
        self.points = points
        self.duration = duration
        self._windows: dict[str, _Window] = {}

    def consume(self, key: str, now: float) -> Outcome:
        window = self._windows.get(key)
        if window is not None and window.blocked_until > now:
            return Outcome(False, 0, _ms(window.blocked_until - now))
        if window is None or now >= window.start + self.duration:
            window = self._windows[key] = _Window(start=now)
        window.count += 1
        if window.count > self.points:
            window.blocked_until = now + self.duration
            return Outcome(False, 0, _ms(self.duration))
        return Outcome(True, self.points - window.count, _ms(window.start + self.duration - now))


class _Bursty:
    def __init__(self, per_second: int, per_minute: int) -> None:
        self._regular = _FixedWindow(per_second, 1.0)
        self._burst = _FixedWindow(per_minute, 60.0)

    def consume(self, key: str, now: float) -> Outcome:
        regular = self._regular.consume(key, now)
        if regular.allowed:
            return regular
        burst = self._burst.consume(key, now)
        if burst.allowed:
            return Outcome(True, regular.remaining, regular.ms_before_next)
        return Outcome(False, 0, min(regular.ms_before_next, burst.ms_before_next))


class RateLimiter:
    """The limiter of every action; ``consume(action, source, now)`` (``now``: clock seconds)."""

    def __init__(self, graphql_per_second: int, graphql_burst: int) -> None:
        self._actions: Mapping[str, _Bursty] = {
            GRAPHQL_ACTION: _Bursty(graphql_per_second, graphql_burst),
            ALL_REQUESTS: _Bursty(*_ALL_REQUESTS_LIMITS),
        }

    def consume(self, action: str, source: str, now: float) -> Outcome:
        limiter = self._actions.get(action) or self._actions[ALL_REQUESTS]
        return limiter.consume(source, now)


def source_of(authorization: str | None, remote: str | None) -> str:
    """``getSourceFromRequest`` before authentication: the token past its id, else the address."""
    token = (authorization or "").replace("Bearer ", "", 1)
    return token[10:] or remote or "unknown"


def rate_limited_response(ms_before_next: int) -> web.Response:
    """The HTTP 429 of a refused request."""
    reset = datetime.now(UTC) + timedelta(milliseconds=ms_before_next)
    headers = {
        "Retry-After": f"{ms_before_next / 1000:g}",
        "X-RateLimit-Reset": reset.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "X-Speckle-Meditation": "https://http.cat/429",
    }
    return json_response(rate_limited_body(), status=429, headers=headers)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))
