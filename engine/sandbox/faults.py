"""Seeded, deterministic fault injection for the sandbox blob store.

Rules this module keeps:

* A decision is a pure function of ``(plan, key, part_number, attempt_index)``: it never depends on
  wall-clock time, on the order in which concurrent requests arrive, or on ``hash()`` randomisation.
  The random draw uses ``random.Random(f"{seed}:{key}:{part}:{attempt}")`` (string seeds are hashed
  with SHA-512 by :mod:`random`, so they are stable across processes).
* ``attempt_index`` counts the requests for one ``(key, part_number)`` that passed validation,
  starting at 0; a single-object PUT uses part number 0. The store keeps the counters, not the plan.
* ``schedule`` wins over ``rates`` and is honoured at any attempt index. ``rates`` are only drawn
  for ``attempt_index < max_faulty_attempts``, so under rates every part succeeds by its
  ``max_faulty_attempts + 1``-th attempt.
* Kinds are the strings in :data:`KINDS`. Rates lie in [0, 1] and sum to at most 1; one uniform draw
  is compared against the cumulative rates in :data:`KINDS` order.
* ``latency`` (seconds) is not a kind: it is added before every blob request.
* A plan is an immutable value; swap a running store's plan with ``store.faults = FaultPlan(...)``.

Nothing here performs I/O: :meth:`FaultPlan.decide` returns a kind and :data:`STATUS_FAULTS` says
which HTTP answer a status kind stands for; the blob store acts on it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "BAD_ETAG",
    "EXPIRED",
    "FAULT_500",
    "FAULT_502",
    "FAULT_503",
    "FAULT_504",
    "KINDS",
    "REQUEST_TIMEOUT",
    "RESET",
    "SLOWDOWN",
    "STALL",
    "STATUS_FAULTS",
    "THROTTLE",
    "FaultPlan",
    "StatusFault",
]

FAULT_500: Final = "500"
FAULT_502: Final = "502"
FAULT_503: Final = "503"
FAULT_504: Final = "504"
SLOWDOWN: Final = "slowdown"
"""503 with S3 code ``SlowDown``."""
THROTTLE: Final = "throttle"
"""429 with a ``Retry-After`` header of ``FaultPlan.retry_after`` seconds (may be fractional)."""
REQUEST_TIMEOUT: Final = "request_timeout"
"""400 with S3 code ``RequestTimeout``."""
RESET: Final = "reset"
"""Read roughly half of the body, then abort the connection."""
STALL: Final = "stall"
"""Read roughly half of the body, stop reading for ``stall_seconds``, then abort the connection."""
EXPIRED: Final = "expired"
"""403 ``AccessDenied`` / ``Request has expired`` although the URL is valid."""
BAD_ETAG: Final = "bad_etag"
"""Store the bytes correctly but answer with a wrong (well-formed, quoted) ETag."""

KINDS: Final[tuple[str, ...]] = (
    FAULT_500,
    FAULT_502,
    FAULT_503,
    FAULT_504,
    SLOWDOWN,
    THROTTLE,
    REQUEST_TIMEOUT,
    RESET,
    STALL,
    EXPIRED,
    BAD_ETAG,
)


@dataclass(frozen=True)
class StatusFault:
    """The HTTP answer a status fault stands for: status, S3 error code and message."""

    status: int
    code: str
    message: str


STATUS_FAULTS: Final[Mapping[str, StatusFault]] = MappingProxyType(
    {
        FAULT_500: StatusFault(
            500, "InternalError", "We encountered an internal error. Please try again."
        ),
        FAULT_502: StatusFault(502, "BadGateway", "The upstream server did not answer in time."),
        FAULT_503: StatusFault(503, "ServiceUnavailable", "Service is unable to handle request."),
        FAULT_504: StatusFault(504, "GatewayTimeout", "The upstream server timed out."),
        SLOWDOWN: StatusFault(503, "SlowDown", "Please reduce your request rate."),
        THROTTLE: StatusFault(429, "TooManyRequests", "Please reduce your request rate."),
        REQUEST_TIMEOUT: StatusFault(
            400,
            "RequestTimeout",
            "Your socket connection to the server was not read from or written to within "
            "the timeout period. Idle connections will be closed.",
        ),
        EXPIRED: StatusFault(403, "AccessDenied", "Request has expired"),
    }
)
"""Kinds answered with an error status (after the body has been read, so the client sees the
status rather than a broken pipe)."""


@dataclass(frozen=True)
class FaultPlan:
    """A seeded, immutable description of which blob requests fail and how.

    ``rates``: kind -> probability per attempt (0..1, summing to at most 1).
    ``schedule``: ``(key, part_number, attempt_index) -> kind`` for exact tests; part 0 is a
    single-object PUT. ``latency``, ``retry_after`` and ``stall_seconds`` are in seconds.
    ``max_faulty_attempts``: rates are not drawn from this attempt index on (the schedule still is).

    A plan compares and hashes by value. The default plan injects nothing.
    """

    seed: int = 0
    rates: Mapping[str, float] = field(default_factory=dict)
    schedule: Mapping[tuple[str, int, int], str] = field(default_factory=dict)
    latency: float = 0.0
    retry_after: float = 0.05
    stall_seconds: float = 5.0
    max_faulty_attempts: int = 3

    def __post_init__(self) -> None:
        rates = {str(kind): float(rate) for kind, rate in self.rates.items()}
        for kind, rate in rates.items():
            if kind not in KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; expected one of {KINDS}")
            if not (0.0 <= rate <= 1.0) or math.isnan(rate):
                raise ValueError(f"fault rate for {kind!r} must lie in [0, 1], got {rate}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {sum(rates.values()):.3f} > 1")
        schedule: dict[tuple[str, int, int], str] = {}
        for slot, kind in self.schedule.items():
            key, part, attempt = slot
            if kind not in KINDS:
                raise ValueError(f"unknown fault kind {kind!r} scheduled at {slot!r}")
            if part < 0 or attempt < 0:
                raise ValueError(f"schedule slot {slot!r} needs part >= 0 and attempt >= 0")
            schedule[(str(key), int(part), int(attempt))] = kind
        for name in ("latency", "retry_after", "stall_seconds"):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")
        if self.max_faulty_attempts < 0:
            raise ValueError("max_faulty_attempts must be >= 0")
        object.__setattr__(self, "rates", MappingProxyType(rates))
        object.__setattr__(self, "schedule", MappingProxyType(schedule))

    def __hash__(self) -> int:
        return hash(
            (
                self.seed,
                frozenset(self.rates.items()),
                frozenset(self.schedule.items()),
                self.latency,
                self.retry_after,
                self.stall_seconds,
                self.max_faulty_attempts,
            )
        )

    def __repr__(self) -> str:
        rates = ",".join(f"{kind}={rate:g}" for kind, rate in self.rates.items())
        return (
            f"FaultPlan(seed={self.seed}, rates={{{rates}}}, scheduled={len(self.schedule)}, "
            f"latency={self.latency:g}s)"
        )

    @property
    def active(self) -> bool:
        """Whether this plan can inject anything at all (faults or latency)."""
        return bool(self.schedule) or any(self.rates.values()) or self.latency > 0.0

    def decide(self, key: str, part_number: int, attempt: int) -> str | None:
        """The fault kind for this attempt at this part, or ``None`` to serve it normally."""
        scheduled = self.schedule.get((key, part_number, attempt))
        if scheduled is not None:
            return scheduled
        if attempt >= self.max_faulty_attempts or not self.rates:
            return None
        # A hash, not random.Random(str): Mersenne Twister seeded with near-identical strings
        # (same key, neighbouring part numbers) gave visibly correlated first draws.
        digest = hashlib.sha256(f"{self.seed}:{key}:{part_number}:{attempt}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        cumulative = 0.0
        for kind in KINDS:
            rate = self.rates.get(kind, 0.0)
            if rate <= 0.0:
                continue
            cumulative += rate
            if draw < cumulative:
                return kind
        return None

    @classmethod
    def from_spec(cls, spec: str, **kwargs: Any) -> FaultPlan:
        """Parse ``"503=0.1,reset=0.05"`` (kind=rate, comma-separated) into a plan.

        Extra keyword arguments (``seed``, ``latency``, ...) are passed to the constructor.
        """
        rates: dict[str, float] = {}
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            kind, sep, rate = item.partition("=")
            if not sep:
                raise ValueError(f"fault spec item {item!r} is not kind=rate")
            try:
                rates[kind.strip()] = float(rate)
            except ValueError:
                raise ValueError(f"fault spec item {item!r}: rate is not a number") from None
        return cls(rates=rates, **kwargs)
