"""The adaptive window's decisions (``engine.window``), and the configuration it is sized by."""

from __future__ import annotations

import pytest

from engine.config import KiB, MiB, UploadConfig
from engine.errors import ConfigError
from engine.retry import Verdict
from engine.window import GAIN, HOLD, START, Ramp, Window, congestion

pytestmark = pytest.mark.anyio


def feed(ramp: Ramp, rate: float) -> int | None:
    """One valid sample, after the skipped one that follows a change."""
    if ramp.settle:
        assert ramp.sample(0.0) is None  # the sample right after a change is not judged
    return ramp.sample(rate)


def test_slow_start_doubles_while_goodput_grows_and_stops_at_the_knee() -> None:
    assert Ramp(ceiling=64).size == START == 16
    ramp = Ramp(ceiling=64, size=8)
    assert feed(ramp, 100.0) == 16  # the first sample starts the first probe
    assert feed(ramp, 180.0) == 32  # +80 %: kept, and doubled again at once
    assert feed(ramp, 185.0) == 16  # +3 %: the knee; back to the size that paid
    assert ramp.phase == "steady"


def test_past_the_knee_it_probes_additively_and_keeps_only_what_pays() -> None:
    ramp = Ramp(ceiling=64, size=16, phase="steady", base=200.0)
    for _ in range(HOLD - 1):
        assert feed(ramp, 200.0) is None
    assert feed(ramp, 200.0) == 18  # an eighth more
    assert feed(ramp, 200.0 * (1 + GAIN) + 1) == 20  # it paid: kept, and the next probe
    assert feed(ramp, 221.0) == 18  # that one did not: back


def test_congestion_halves_and_never_goes_below_one() -> None:
    ramp = Ramp(ceiling=64, size=8)
    assert ramp.congested() == 4
    assert ramp.phase == "steady"
    assert ramp.congested() == 2
    assert ramp.congested() == 1
    assert ramp.congested() is None
    assert ramp.size == 1


def test_the_ceiling_is_never_passed() -> None:
    ramp = Ramp(ceiling=12, size=8)
    assert feed(ramp, 100.0) == 12
    assert feed(ramp, 500.0) is None  # at the ceiling: nothing more to probe
    assert Ramp(ceiling=3).size == 3


@pytest.mark.parametrize(
    ("verdict", "pushed"),
    [
        (Verdict("transient", "HTTP 503 SlowDown: Please reduce your request rate."), True),
        (Verdict("transient", "HTTP 429 TooManyRequests"), True),
        (Verdict("transient", "HTTP 500 InternalError", retry_after=2.0), True),
        (Verdict("transient", "ClientOSError: [Errno 104] Connection reset by peer"), True),
        (Verdict("transient", "ServerDisconnectedError: Server disconnected"), True),
        (Verdict("transient", "HTTP 500 InternalError: We encountered an internal error"), False),
        (Verdict("transient", "ETag mismatch: the store answered another digest"), False),
        (Verdict("fatal", "HTTP 403 AccessDenied"), False),
        (Verdict("expired", "HTTP 403 AccessDenied: Request has expired"), False),
    ],
)
def test_what_counts_as_the_path_pushing_back(verdict: Verdict, pushed: bool) -> None:
    assert congestion(verdict) is pushed


async def test_the_window_samples_acknowledged_parts_only_while_every_slot_is_busy() -> None:
    now = [0.0]
    changes: list[tuple[int, str]] = []
    window = Window(
        fixed=None, ceiling=64, now=lambda: now[0], on_change=lambda n, w: changes.append((n, w))
    )
    window.stored(10_000_000)
    now[0] = 1.0
    window.stored(10_000_000)
    assert changes == []  # not full: no sample began
    async with window.limiter:
        pass  # one slot busy of sixteen: still not full
    window.stored(1)
    assert changes == []
    borrowers = [object() for _ in range(window.size)]
    for b in borrowers:
        window.limiter.acquire_on_behalf_of_nowait(b)
    window.stored(0)  # full: a sample begins
    now[0] = 1.5
    for _ in range(7):
        window.stored(5_000_000)
    assert changes == []  # 0.5 s, but 7 parts: fewer than half a window (8)
    window.stored(15_000_000)
    assert changes == [(32, "goodput 100 MB/s")]
    assert window.size == 32
    for b in borrowers:
        window.limiter.release_on_behalf_of(b)


async def test_a_fixed_window_never_changes() -> None:
    changes: list[int] = []
    window = Window(fixed=3, ceiling=3, now=lambda: 0.0, on_change=lambda n, _: changes.append(n))
    window.pushed_back(Verdict("transient", "HTTP 503 SlowDown"))
    window.stored(10**9)
    assert window.size == 3 and window.ceiling == 3 and changes == []


async def test_one_halving_per_sample_for_a_burst_of_failures() -> None:
    now = [0.0]
    sizes: list[int] = []
    window = Window(
        fixed=None, ceiling=64, now=lambda: now[0], on_change=lambda n, _: sizes.append(n)
    )
    for _ in range(5):
        window.pushed_back(Verdict("transient", "HTTP 503 SlowDown"))
    assert sizes == [START // 2]
    now[0] = 1.0
    window.pushed_back(Verdict("transient", "HTTP 503 SlowDown"))
    assert sizes == [START // 2, START // 4]


def test_the_budget_and_the_chunk_that_keeps_memory_within_it() -> None:
    adaptive = UploadConfig()
    assert adaptive.adaptive and adaptive.budget == 64
    assert adaptive.memory_ceiling <= adaptive.memory_budget
    assert adaptive.effective_chunk % (64 * KiB) == 0
    fixed = UploadConfig(concurrency=8)
    assert not fixed.adaptive and fixed.budget == 8
    assert fixed.effective_chunk == 1 * MiB  # a small budget keeps the whole chunk
    many = UploadConfig(concurrency=1024, memory_budget=4 * MiB)
    assert many.effective_chunk == 64 * KiB  # never below 64 KiB
    with pytest.raises(ConfigError, match="max_concurrency"):
        UploadConfig(max_concurrency=0)
    with pytest.raises(ConfigError, match="data_loops"):
        UploadConfig(data_loops=0)
