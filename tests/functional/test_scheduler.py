"""The scheduler's window and look-ahead against the in-process sandbox's blob store.

- part URLs are asked for ahead of need and outside the PUT slots (a slow control plane does
  not idle a data slot);
- a rerun plans the ranges the journal planned, whatever the window is now;
- the adaptive window grows on a path where more connections bring more goodput, and halves
  when the store pushes back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest

from engine import (
    Event,
    FileStarted,
    PartDone,
    PartLimits,
    PartRequest,
    PartSpec,
    PresignedMultipart,
    UploadConfig,
    Uploader,
)
from engine.clock import FakeClock
from engine.events import Concurrency
from engine.models import PartResult
from engine.plan import FILL_FLOOR
from engine.sandbox.faults import FaultPlan
from engine.sandbox.server import Sandbox, SandboxConfig
from engine.target import TargetContext
from engine.window import START
from tests.functional.test_transfer import md5, write

pytestmark = pytest.mark.anyio

KiB = 1024
MiB = 1024 * KiB
PART = 64 * KiB


@pytest.fixture
async def sb(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(data_dir=tmp_path / "sandbox", min_part_size=PART)) as s:
        yield s


class Recorded(PresignedMultipart):
    """A presigned multipart upload into the sandbox that records when each part's URL is
    asked for: the PUTs in flight then, and which parts were already stored."""

    def __init__(self, sb: Sandbox, key: str, *, min_size: int = PART, ask_delay: float = 0.0):
        upload_id = sb.store.create_multipart(key)
        self.done: set[int] = set()
        self.asked: list[tuple[int, int, frozenset[int]]] = []
        self.uploader: Uploader | None = None
        self.ask_delay = ask_delay
        super().__init__(
            lambda n: sb.store.presign_part(key, upload_id, n),
            lambda parts: {
                "md5": sb.store.complete_multipart(
                    key, upload_id, [(p.number, p.etag) for p in parts]
                ).md5
            },
            limits=PartLimits(min_size=min_size),
        )

    async def part_request(
        self, part: PartSpec, ctx: TargetContext, *, refresh: bool
    ) -> PartRequest:
        in_flight = self.uploader.connections[0] if self.uploader is not None else -1
        self.asked.append((part.number, in_flight, frozenset(self.done)))
        if self.ask_delay:
            await anyio.sleep(self.ask_delay)  # a control plane a long way off
        return await super().part_request(part, ctx, refresh=refresh)

    def on_event(self, event: Event) -> None:
        if isinstance(event, PartDone):
            self.done.add(event.part)


def cfg(**kw: object) -> UploadConfig:
    base: dict[str, object] = {"part_size": PART, "chunk_size": 16 * KiB, "backoff_base": 0.0}
    base.update(kw)
    return UploadConfig(**base)  # type: ignore[arg-type]


async def test_part_urls_are_asked_for_ahead_and_outside_the_put_slots(
    sb: Sandbox, tmp_path: Path
) -> None:
    src = write(tmp_path / "ahead.e57", 8 * PART)
    sb.store.faults = FaultPlan(latency=0.05)  # each PUT takes a while: URLs are asked meanwhile
    target = Recorded(sb, "uploads/ahead.e57", ask_delay=0.02)
    async with Uploader(cfg(concurrency=1), on_event=target.on_event) as up:
        target.uploader = up
        result = await up.upload(src, target)
    assert result.remote.ids["md5"] == md5(src)
    # With one slot, a URL asked for while a PUT is in flight (and before the part before it
    # is stored) was asked for ahead of need, by a task that holds no slot: there is one.
    ahead = [n for n, in_flight, done in target.asked if in_flight == 1 and n - 1 not in done]
    assert len(ahead) >= 6, target.asked
    assert sorted(n for n, _, _ in target.asked) == list(range(1, 9))  # one URL per part


async def test_a_rerun_plans_the_journaled_ranges_whatever_the_window(
    sb: Sandbox, tmp_path: Path
) -> None:
    src = write(tmp_path / "plan.e57", 48 * MiB)
    journal = tmp_path / "journal.jsonl"
    target = Recorded(sb, "uploads/plan.e57")
    first: list[PartDone] = []

    def stop_after_one(e: Event) -> None:
        if isinstance(e, PartDone):
            first.append(e)
            scope.cancel()

    # A fixed window of 2 plans the file in two parts of 24 MiB (enough to fill 2 slots) ...
    config = cfg(concurrency=2, part_size=32 * MiB)
    async with Uploader(config, on_event=stop_after_one, journal=journal) as up:
        target.uploader = up
        with anyio.CancelScope() as scope:
            await up.upload(src, target)
    assert [e.size for e in first] == [24 * MiB]
    # ... and a rerun with the adaptive window, which would plan parts of 8 MiB to fill four
    # times its 16 slots, plans the same ranges, so that the part stored before still counts.
    started: list[Event] = []
    async with Uploader(cfg(part_size=32 * MiB), on_event=started.append, journal=journal) as up:
        target.uploader = up
        result = await up.upload(src, target)
    assert result.remote.ids["md5"] == md5(src)
    assert [p.size for p in result.parts] == [24 * MiB, 24 * MiB]
    begun = next(e for e in started if isinstance(e, FileStarted))
    assert begun.parts_done == 1
    # a new file under the adaptive window is planned to fill it, with parts of FILL_FLOOR
    fresh = write(tmp_path / "fresh.e57", 48 * MiB, seed=2)
    async with Uploader(cfg(part_size=32 * MiB)) as up:
        target = Recorded(sb, "uploads/fresh.e57")
        target.uploader = up
        result = await up.upload(fresh, target)
    assert [p.size for p in result.parts] == [FILL_FLOOR] * 6


async def test_a_plan_the_limits_no_longer_allow_sends_every_part_again(
    sb: Sandbox, tmp_path: Path
) -> None:
    src = write(tmp_path / "limits.e57", 12 * PART)
    journal = tmp_path / "journal.jsonl"
    key = "uploads/limits.e57"
    seen: list[Event] = []

    def stop_after_two(e: Event) -> None:
        if isinstance(e, PartDone) and sum(isinstance(x, PartDone) for x in seen) == 1:
            scope.cancel()
        seen.append(e)

    target = Recorded(sb, key)
    async with Uploader(cfg(concurrency=1), on_event=stop_after_two, journal=journal) as up:
        target.uploader = up
        with anyio.CancelScope() as scope:
            await up.upload(src, target)
    # The destination now wants parts of at least 4 x PART: the journaled plan (parts of one
    # PART) cannot be kept, and no part stored under it may count under the new one.
    bigger = Recorded(sb, key, min_size=4 * PART)
    started: list[Event] = []
    async with Uploader(cfg(concurrency=1), on_event=started.append, journal=journal) as up:
        bigger.uploader = up
        result = await up.upload(src, bigger)
    assert result.remote.ids["md5"] == md5(src)
    assert [p.size for p in result.parts] == [4 * PART] * 3
    begun = next(e for e in started if isinstance(e, FileStarted))
    assert begun.parts_done == 0 and begun.parts == 3


def sizes(events: Sequence[Event]) -> list[int]:
    return [e.size for e in events if isinstance(e, Concurrency)]


async def test_the_window_grows_where_more_connections_bring_more_goodput(
    sb: Sandbox, tmp_path: Path
) -> None:
    # Every PUT waits 40 ms at the store: one connection's goodput is bounded by the round
    # trip, so each doubling of the window nearly doubles goodput, up to the ceiling.
    src = write(tmp_path / "grow.e57", 640 * PART)
    sb.store.faults = FaultPlan(latency=0.04)
    events: list[Event] = []
    config = cfg(max_concurrency=32)
    async with Uploader(config, on_event=events.append) as up:
        result = await up.upload(src, Recorded(sb, "uploads/grow.e57"))
    assert result.remote.ids["md5"] == md5(src)
    grown = sizes(events)
    assert grown and max(grown) > START, grown
    assert max(grown) <= 32
    assert all(isinstance(e, PartResult) for e in result.parts)


async def test_the_window_halves_when_the_store_pushes_back(sb: Sandbox, tmp_path: Path) -> None:
    src = write(tmp_path / "slow.e57", 40 * PART)
    sb.store.faults = FaultPlan(seed=7, rates={"slowdown": 0.3})
    events: list[Event] = []
    async with Uploader(cfg(), on_event=events.append, clock=FakeClock()) as up:
        result = await up.upload(src, Recorded(sb, "uploads/slow.e57"))
        assert up.connections[1] < START  # the window it ended with
    assert result.remote.ids["md5"] == md5(src)
    shrunk = [e for e in events if isinstance(e, Concurrency)]
    assert shrunk and shrunk[0].size == START // 2 and "SlowDown" in shrunk[0].why
    assert all(e.why.startswith("pushed back") for e in shrunk)
    assert [e.size for e in shrunk] == sorted((e.size for e in shrunk), reverse=True)
    assert min(e.size for e in shrunk) >= 1
