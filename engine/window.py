"""How many PUTs are in flight: a fixed number, or a window that adapts to the path.

``Ramp`` decides (pure: no I/O, no clock of its own); ``Window`` applies its decisions to the
limiter the scheduler's PUTs share and measures goodput from the bytes they report.

Rules of the adaptive window (``UploadConfig.concurrency is None``):
- it starts at ``START`` PUTs (fewer when the ceiling is lower);
- goodput is the bytes of the parts the store acknowledged (their PUT answered), over samples
  of at least ``SAMPLE`` seconds and at least half a window of parts: bytes written to a
  socket are not goodput (the kernel's buffers take megabytes per connection at once, and a
  new connection would look like a gain); a sample counts only when every slot of the window
  was busy at its start and at its end (a window that is not full says nothing about what
  more connections would bring: too few parts, or files between);
- slow start: the window doubles while each doubling raised goodput by at least ``GAIN``;
- at the knee (a change that did not pay) it goes back to the last size that paid and from
  then on probes upward additively (an eighth more, at least one) every ``HOLD`` samples,
  keeping a probe only when it pays;
- the sample right after a change is skipped (new connections are still opening);
- congestion (``congestion``: a 503 / SlowDown / 429, a ``Retry-After``, a reset or dropped
  connection) halves the window, not below one: additive increase, multiplicative decrease;
  one halving per ``SAMPLE`` at most, so a burst of failures of the same moment counts once;
- never above the ceiling (``max_concurrency``, and the sender's slots), never below one;
  PUTs in flight finish when the window shrinks.

A fixed window (``concurrency=N``, or a ``PartSender``'s ``slots``) never changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import anyio

from engine.retry import Verdict

__all__ = ["GAIN", "HOLD", "SAMPLE", "START", "Ramp", "Window", "congestion"]

START: Final = 16
SAMPLE: Final = 0.25  # seconds per goodput sample
GAIN: Final = 0.10  # a change must raise goodput by this fraction to be kept
HOLD: Final = 4  # samples between additive probes once past the knee

_CONGESTED = re.compile(
    r"HTTP (429|503)\b|SlowDown|Throttl|TooManyRequests|reset|ServerDisconnected|"
    r"Connection aborted|Broken pipe",
    re.IGNORECASE,
)


def congestion(verdict: Verdict) -> bool:
    """Whether a failed PUT says the path or the server is overloaded (shrink the window):
    throttling answers, ``Retry-After``, resets and dropped connections."""
    if verdict.kind != "transient":
        return False
    return verdict.retry_after is not None or _CONGESTED.search(verdict.reason) is not None


Phase = Literal["slow", "steady"]


@dataclass(slots=True)
class Ramp:
    """The adaptive window's state machine. ``sample(rate)`` and ``congested()`` return the
    new size when it changes, else ``None``."""

    ceiling: int
    size: int = START
    phase: Phase = "slow"
    base: float | None = None  # goodput at the last size that paid
    probe_from: int | None = None  # the size a probe started from, while one runs
    settle: int = 0  # samples still to skip after a change
    held: int = 0  # samples at this size since the knee

    def __post_init__(self) -> None:
        self.size = max(1, min(self.size, self.ceiling))

    def _to(self, size: int) -> int | None:
        size = max(1, min(size, self.ceiling))
        if size == self.size:
            return None
        self.size, self.settle = size, 1
        return size

    def sample(self, rate: float) -> int | None:
        """A valid sample (the window was full) measured ``rate`` bytes per second."""
        if self.settle:
            self.settle -= 1
            return None
        if self.probe_from is not None:  # the verdict on a probe
            start, self.probe_from = self.probe_from, None
            if self.base is not None and rate < self.base * (1 + GAIN):
                self.phase, self.held = "steady", 0
                return self._to(start)
            self.base = rate
            return self._probe()
        self.base = rate if self.base is None else max(self.base, rate)
        if self.phase == "steady":
            self.held += 1
            if self.held < HOLD:
                return None
            self.held = 0
            self.base = rate  # compare the probe with now, not with an old best
        return self._probe()

    def _probe(self) -> int | None:
        if self.size >= self.ceiling:
            return None
        step = self.size if self.phase == "slow" else max(1, self.size // 8)
        start = self.size
        changed = self._to(self.size + step)
        if changed is not None:
            self.probe_from = start
        return changed

    def congested(self) -> int | None:
        """The path pushed back: halve the window and stop slow start."""
        self.phase, self.held, self.probe_from, self.base = "steady", 0, None, None
        return self._to(self.size // 2)


class Window:
    """The limiter every PUT of one engine holds while it sends, sized by a ``Ramp`` (or
    fixed). ``stored`` is fed each acknowledged part's size; ``pushed_back`` a failed PUT's
    verdict. ``on_change(size, why)`` hears each new size."""

    def __init__(
        self,
        *,
        fixed: int | None,
        ceiling: int,
        now: Callable[[], float],
        on_change: Callable[[int, str], None],
    ) -> None:
        self.ramp: Ramp | None = None
        if fixed is None:
            self.ramp = Ramp(ceiling)  # it starts at START, or at the ceiling when lower
            fixed = self.ramp.size
        self.limiter = anyio.CapacityLimiter(fixed)
        self._now = now
        self._on_change = on_change
        self._bytes = 0
        self._parts = 0
        self._started: float | None = None  # when the current sample began (window full)
        self._last_cut = float("-inf")

    def __repr__(self) -> str:
        mode = "fixed" if self.ramp is None else self.ramp.phase
        return f"<Window {mode} size={self.size} in_flight={self.in_flight}>"

    @property
    def size(self) -> int:
        return int(self.limiter.total_tokens)

    @property
    def in_flight(self) -> int:
        return int(self.limiter.borrowed_tokens)

    @property
    def ceiling(self) -> int:
        """The most PUTs this window may ever allow."""
        return self.size if self.ramp is None else self.ramp.ceiling

    def _full(self) -> bool:
        return self.in_flight >= self.size

    def stored(self, n: int) -> None:
        """A PUT of ``n`` bytes was answered with success (the store has them)."""
        if self.ramp is None:
            return
        now = self._now()
        if self._started is None:
            if self._full():
                self._started, self._bytes, self._parts = now, 0, 0
            return
        self._bytes += n
        self._parts += 1
        elapsed = now - self._started
        if elapsed < SAMPLE or self._parts < max(2, self.size // 2):
            return
        rate, full = self._bytes / elapsed, self._full()
        self._started, self._bytes, self._parts = (now if full else None), 0, 0
        if full:
            self._apply(self.ramp.sample(rate), f"goodput {rate / 1e6:.0f} MB/s")

    def pushed_back(self, verdict: Verdict) -> None:
        """A PUT failed; shrink the window when the failure says the path is overloaded."""
        if self.ramp is None or not congestion(verdict):
            return
        now = self._now()
        if now - self._last_cut < SAMPLE:
            return
        self._last_cut = now
        self._started = None
        self._apply(self.ramp.congested(), f"pushed back: {verdict.reason}")

    def _apply(self, size: int | None, why: str) -> None:
        if size is None:
            return
        self.limiter.total_tokens = size
        self._on_change(size, why)
