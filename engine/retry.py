"""Retry decisions: pure functions over status codes, bodies and attempt counts.

Rules (S3 semantics behind every presigned URL):
- transient: connection errors and resets, timeouts, stalls, 500/502/503/504, 429,
  S3 ``SlowDown`` and ``RequestTimeout``, an ETag that does not match the bytes sent;
- expired: 403 whose body says ``Request has expired`` -> fetch a fresh URL, then retry;
- fatal: every other 4xx, with the server's message.
Backoff is full jitter: ``uniform(0, min(cap, base * 2 ** (attempt - 1)))``; a server's
``Retry-After`` replaces it (capped at ``retry_after_cap``, by default ``cap``).

``RetryPolicy`` is the one frozen description of how often and how long to retry; ``decide`` is
the part loop's pure verdict-to-action step; ``engine.wait`` applies the same policy to GraphQL
calls, recovery rounds and polling.
"""

from __future__ import annotations

import email.utils
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from engine.config import UploadConfig
from engine.errors import ConfigError

__all__ = [
    "Decision",
    "RetryPolicy",
    "Verdict",
    "backoff_delay",
    "classify_response",
    "decide",
    "is_md5_etag",
    "parse_retry_after",
    "parse_s3_error",
]

Kind = Literal["transient", "expired", "fatal"]

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
)
_CODE_RE = re.compile(rb"<Code>([^<]{1,200})</Code>")
_MESSAGE_RE = re.compile(rb"<Message>([^<]{0,500})</Message>")
_MD5_RE = re.compile(r'^"?[0-9a-fA-F]{32}"?$')


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    reason: str
    retry_after: float | None = None


def parse_s3_error(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3-style XML error body; empty strings when absent."""
    code = _CODE_RE.search(body)
    message = _MESSAGE_RE.search(body)
    return (
        code.group(1).decode("utf-8", "replace") if code else "",
        message.group(1).decode("utf-8", "replace") if message else "",
    )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds, possibly fractional,
    or an HTTP date); ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def classify_response(status: int, body: bytes, retry_after: str | None = None) -> Verdict:
    """What to do about a non-2xx answer to a PUT."""
    code, message = parse_s3_error(body)
    detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    if status == 403 and (b"Request has expired" in body or code == "ExpiredToken"):
        return Verdict("expired", detail)
    if status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
        return Verdict("transient", detail, parse_retry_after(retry_after))
    if not message and not code and body:
        text = body[:200].decode("utf-8", "replace").strip()
        if text and not text.lstrip().startswith("<"):
            detail = f"HTTP {status}: {text}"
    return Verdict("fatal", detail)


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter delay before attempt ``attempt + 1`` (``attempt`` >= 1 failed)."""
    ceiling = min(cap, base * (2 ** min(attempt - 1, 60)))
    return rng.uniform(0.0, ceiling)


def is_md5_etag(etag: str) -> bool:
    """True when an ETag is a plain MD5 hex digest (quoted or not): not multipart, not KMS."""
    return bool(_MD5_RE.match(etag))


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How often and how long to retry. Seconds throughout.

    max_attempts:    attempts in all, the first one included;
    base, cap:       full-jitter backoff ``jitter * min(cap, base * 2 ** (attempt - 1))``;
    retry_after_cap: the longest server-asked wait (``Retry-After``) honoured; ``None``: ``cap``.
    """

    max_attempts: int = 8
    base: float = 0.25
    cap: float = 20.0
    retry_after_cap: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base < 0 or self.cap < self.base:
            raise ConfigError("backoff needs 0 <= base <= cap")
        if self.retry_after_cap is not None and self.retry_after_cap < 0:
            raise ConfigError("retry_after_cap must not be negative")

    @classmethod
    def of(cls, config: UploadConfig) -> RetryPolicy:
        """The policy an ``UploadConfig`` describes."""
        return cls(
            max_attempts=config.max_attempts, base=config.backoff_base, cap=config.backoff_cap
        )

    def delay(self, attempt: int, jitter: float, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (>= 1); ``jitter`` in [0, 1)."""
        if retry_after is not None:
            ceiling = self.cap if self.retry_after_cap is None else self.retry_after_cap
            return min(max(0.0, retry_after), ceiling)
        growth: float = 2.0 ** min(attempt - 1, 60)
        return jitter * min(self.cap, self.base * growth)


Action = Literal["retry", "reject", "stop", "give_up"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt: ``retry`` (after ``delay`` s, with a fresh URL when
    ``refresh``), ``reject`` (the server refused for good), ``stop`` (the run is stopping),
    ``give_up`` (attempts exhausted)."""

    action: Action
    delay: float = 0.0
    refresh: bool = False


def decide(
    verdict: Verdict, attempt: int, policy: RetryPolicy, *, stopping: bool, jitter: float
) -> Decision:
    """The part loop's step after failed attempt ``attempt``. Pure: the caller draws ``jitter``."""
    if verdict.kind == "fatal":
        return Decision("reject")
    if stopping:
        return Decision("stop")
    if attempt >= policy.max_attempts:
        return Decision("give_up")
    if verdict.kind == "expired":
        return Decision("retry", 0.0, refresh=True)
    return Decision("retry", policy.delay(attempt, jitter, verdict.retry_after))
