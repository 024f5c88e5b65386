"""Retry decisions: pure functions over status codes, bodies and attempt counts.

Rules (S3 semantics behind every presigned URL):
- transient: connection errors and resets, timeouts, stalls, 500/502/503/504, 429,
  S3 ``SlowDown`` and ``RequestTimeout``, an ETag that does not match the bytes sent;
- expired: 403 whose body says ``Request has expired`` (S3), or Azure's 403
  ``AuthenticationFailed`` whose ``AuthenticationErrorDetail`` says the SAS is outside its time
  frame -> fetch a fresh URL, then retry;
- fatal: every other 4xx, with the server's message.
ETags are compared with the MD5 of the bytes only where the answer says they can be one
(``integrity_of``): an S3-style quoted 32-hex ETag with no SSE-KMS / DSSE-KMS / SSE-C header
(S3's rule: objects and parts encrypted with SSE-KMS or SSE-C have ETags that are not an MD5
of their data); else a ``Content-MD5`` response header (Azure's Put Blob computes one); else
nothing can be checked.
Backoff is full jitter: ``uniform(0, min(cap, base * 2 ** (attempt - 1)))``; a server's
``Retry-After`` replaces it (capped at ``retry_after_cap``, by default ``cap``).

``RetryPolicy`` is the one frozen description of how often and how long to retry; ``decide`` is
the part loop's pure verdict-to-action step; ``engine.wait`` applies the same policy to GraphQL
calls, recovery rounds and polling.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from engine.config import UploadConfig
from engine.errors import ConfigError

__all__ = [
    "INTEGRITY_HEADERS",
    "Decision",
    "Integrity",
    "RetryPolicy",
    "Verdict",
    "backoff_delay",
    "classify_response",
    "decide",
    "integrity_of",
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
_QUOTED_MD5_RE = re.compile(r'^"[0-9a-fA-F]{32}"$')
_AZURE_DETAIL_RE = re.compile(
    rb"<AuthenticationErrorDetail>([^<]{0,500})</AuthenticationErrorDetail>"
)
#: what Azure's AuthenticationErrorDetail says of a SAS used outside its validity (expired,
#: or not yet valid: both mean "get a fresh URL")
_SAS_TIME = (b"Signature not valid in the specified time frame", b"Signed expiry time")
#: S3's server-side encryption values whose ETags are not an MD5 of the data
_KMS = frozenset({"aws:kms", "aws:kms:dsse"})
_SSE = "x-amz-server-side-encryption"
_SSE_C = "x-amz-server-side-encryption-customer-algorithm"
#: the response headers ``integrity_of`` reads (lower case); the data path keeps only these
INTEGRITY_HEADERS = (_SSE, _SSE_C, "content-md5", "x-ms-content-crc64")


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


def _azure_detail(body: bytes) -> str:
    found = _AZURE_DETAIL_RE.search(body)
    return " ".join(found.group(1).decode("utf-8", "replace").split()) if found else ""


def classify_response(status: int, body: bytes, retry_after: str | None = None) -> Verdict:
    """What to do about a non-2xx answer to a PUT."""
    code, message = parse_s3_error(body)
    # Azure's message runs on with "RequestId:... Time:..." lines: keep its first line.
    message = message.split("\n", 1)[0].strip()
    extra = _azure_detail(body) if code == "AuthenticationFailed" else ""
    detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    detail += f" ({extra})" if extra else ""
    if status == 403 and (b"Request has expired" in body or code == "ExpiredToken"):
        return Verdict("expired", detail)
    if status == 403 and extra and any(t.decode() in extra for t in _SAS_TIME):
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


Check = Literal["etag", "content-md5", "none"]


@dataclass(frozen=True, slots=True)
class Integrity:
    """What a PUT's answer lets the client compare with the bytes it sent.

    ``check``: ``"etag"`` (the ETag is the MD5), ``"content-md5"`` (the store's own MD5 of
    the body, a response header), ``"none"`` (nothing: ``why`` says so in words).
    ``md5``: the hex digest to compare with the MD5 of the bytes ("" for ``"none"``)."""

    check: Check
    md5: str = ""
    why: str = ""

    def mismatch(self, sent_md5: str) -> Verdict | None:
        """A transient verdict when the store's digest differs from ``sent_md5``, else None."""
        if self.check == "none" or not sent_md5 or self.md5 == sent_md5:
            return None
        what = "ETag" if self.check == "etag" else "Content-MD5"
        return Verdict("transient", f"{what} does not match the MD5 of the bytes sent")


def _content_md5(value: str) -> str:
    """The hex MD5 a base64 ``Content-MD5`` header holds, or ""."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return ""
    return raw.hex() if len(raw) == 16 else ""


def integrity_of(etag: str, headers: Mapping[str, str]) -> Integrity:
    """What the answer to a PUT (its ETag and ``INTEGRITY_HEADERS``, names in lower case)
    lets the client check. Pure; see the module rules for the order."""
    sse = headers.get(_SSE, "").strip().lower()
    encrypted = sse in _KMS or bool(headers.get(_SSE_C))
    if not encrypted and _QUOTED_MD5_RE.match(etag.strip()):
        return Integrity("etag", etag.strip().strip('"').lower())
    md5 = _content_md5(headers.get("content-md5", ""))
    if md5:
        return Integrity("content-md5", md5)
    if sse in _KMS:
        why = f"it encrypts with SSE-KMS ({sse}), whose ETags are not MD5s"
    elif encrypted:
        why = "it encrypts with SSE-C, whose ETags are not MD5s"
    elif headers.get("x-ms-content-crc64"):
        why = "it answers a CRC-64 only (x-ms-content-crc64), which this client does not compute"
    else:
        why = f"its ETags ({etag[:24]}) are not MD5s and it sends no Content-MD5"
    return Integrity("none", why=why)


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
