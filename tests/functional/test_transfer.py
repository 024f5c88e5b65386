"""The engine against the in-process sandbox's blob store: real HTTP on loopback, faults on.

Every upload is checked byte for byte against the source; the retries the sandbox injected
must show up in the engine's events.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import anyio
import pytest

from engine import (
    Event,
    PartDone,
    PartLimits,
    PartRejectedError,
    PartRetry,
    PresignedMultipart,
    RetriesExhaustedError,
    SourceChangedError,
    UploadConfig,
    Uploader,
)
from engine.cli.destinations import sandbox_target
from engine.clock import FakeClock
from engine.models import FileInfo
from engine.sandbox.faults import FaultPlan
from engine.sandbox.server import Sandbox, SandboxConfig

pytestmark = pytest.mark.anyio

KiB = 1024
MiB = 1024 * KiB
PART = 64 * KiB  # small parts keep the tests fast; the rules are the same as at 5 MiB


def cfg(**kw: object) -> UploadConfig:
    base: dict[str, object] = {
        "part_size": PART,
        "chunk_size": 16 * KiB,
        "concurrency": 4,
        "backoff_base": 0.0,
        "backoff_cap": 1.0,
    }
    base.update(kw)
    return UploadConfig(**base)  # type: ignore[arg-type]


def write(path: Path, size: int, seed: int = 1) -> Path:
    rnd = hashlib.sha256(str(seed).encode()).digest()
    block = (rnd * (1 + (1 * MiB) // len(rnd)))[: 1 * MiB]
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(os.urandom(16) + block[16:n] if n > 16 else os.urandom(n))
            left -= n
    return path


def open_fds() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
async def sb(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(data_dir=tmp_path / "sandbox", min_part_size=PART)) as s:
        yield s


def stored_bytes(sb: Sandbox, key: str) -> bytes:
    path = sb.store.object_path(key)
    assert path is not None
    return path.read_bytes()


@pytest.mark.parametrize(
    "size",
    [0, 1, PART, 3 * PART + 123, 40 * PART],
    ids=["empty", "one-byte", "exactly-one-part", "parts-and-remainder", "forty-parts"],
)
async def test_every_size_arrives_byte_identical_with_faults_on(
    sb: Sandbox, tmp_path: Path, size: int
) -> None:
    src = write(tmp_path / f"scan-{size}.e57", size)
    sb.store.faults = FaultPlan(
        seed=size, rates={"503": 0.15, "reset": 0.1, "slowdown": 0.05, "throttle": 0.05}
    )
    events: list[Event] = []
    async with Uploader(cfg(), on_event=events.append, clock=FakeClock()) as up:
        result = await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
    key = f"uploads/{src.name}"
    assert stored_bytes(sb, key) == src.read_bytes()
    assert result.remote.ids["md5"] == md5(src)
    assert [p.number for p in result.parts] == list(range(1, len(result.parts) + 1))
    injected = sum(sb.store.stats()["faults"].values())
    retries = [e for e in events if isinstance(e, PartRetry)]
    assert len(retries) == injected == result.retries
    if size >= 40 * PART:
        assert injected > 0  # this seed and size do inject faults


async def test_a_few_hundred_mib_with_faults(sb: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "big.e57"
    with src.open("wb") as f:
        for _ in range(200):
            f.write(os.urandom(MiB))
    sb.store.faults = FaultPlan(seed=3, rates={"503": 0.05, "reset": 0.05})
    events: list[Event] = []
    config = cfg(part_size=8 * MiB, chunk_size=1 * MiB, concurrency=8)
    async with Uploader(config, on_event=events.append, clock=FakeClock()) as up:
        result = await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
    assert result.remote.ids["md5"] == md5(src)
    assert stored_bytes(sb, "uploads/big.e57") == src.read_bytes()
    assert result.retries == sum(isinstance(e, PartRetry) for e in events) > 0


async def test_expired_url_is_refreshed_and_bad_etag_is_resent(sb: Sandbox, tmp_path: Path) -> None:
    src = write(tmp_path / "a.e57", 3 * PART)
    key = "uploads/a.e57"
    sb.store.faults = FaultPlan(schedule={(key, 1, 0): "expired", (key, 2, 0): "bad_etag"})
    calls: list[int] = []
    target = sandbox_target(sb, FileInfo.of(src))
    original = target._part_url

    def counting(n: int) -> object:
        calls.append(n)
        return original(n)

    target._part_url = counting  # type: ignore[assignment]
    events: list[Event] = []
    async with Uploader(cfg(), on_event=events.append, clock=FakeClock()) as up:
        result = await up.upload(src, target)
    reasons = {e.part: e.reason for e in events if isinstance(e, PartRetry)}
    assert "Request has expired" in reasons[1]
    assert "ETag does not match" in reasons[2]
    assert calls.count(1) == 2  # a fresh URL for the expired part
    assert result.remote.ids["md5"] == md5(src)


async def test_retry_after_is_honoured(sb: Sandbox, tmp_path: Path) -> None:
    src = write(tmp_path / "t.e57", PART)
    sb.store.faults = FaultPlan(schedule={("uploads/t.e57", 1, 0): "throttle"}, retry_after=0.3)
    clock = FakeClock()
    async with Uploader(cfg(), clock=clock) as up:
        await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
    assert clock.slept == [0.3]


async def test_a_fatal_4xx_fails_at_once_with_the_server_message(
    sb: Sandbox, tmp_path: Path
) -> None:
    src = write(tmp_path / "f.e57", 2 * PART)
    target = PresignedMultipart(
        lambda n: sb.store.presign_part("uploads/f.e57", "no-such-upload", n),
        lambda parts: None,
    )
    events: list[Event] = []
    async with Uploader(cfg(), on_event=events.append, clock=FakeClock()) as up:
        with pytest.raises(PartRejectedError, match="NoSuchUpload") as info:
            await up.upload(src, target)
    assert info.value.part_number in (1, 2)
    assert not any(isinstance(e, PartRetry) for e in events)
    assert "X-Signature" not in str(info.value)


async def test_permanent_faults_exhaust_the_attempts(sb: Sandbox, tmp_path: Path) -> None:
    src = write(tmp_path / "p.e57", PART)
    sb.store.faults = FaultPlan(schedule={("uploads/p.e57", 1, i): "503" for i in range(10)})
    async with Uploader(cfg(max_attempts=4), clock=FakeClock()) as up:
        with pytest.raises(RetriesExhaustedError, match="part 1 failed 4 times; last: HTTP 503"):
            await up.upload(src, sandbox_target(sb, FileInfo.of(src)))


async def test_a_stalled_put_is_cancelled_and_retried(sb: Sandbox, tmp_path: Path) -> None:
    src = write(tmp_path / "s.e57", 2 * PART)
    sb.store.faults = FaultPlan(schedule={("uploads/s.e57", 1, 0): "stall"}, stall_seconds=5.0)
    events: list[Event] = []
    async with Uploader(cfg(stall_timeout=0.5), on_event=events.append, clock=FakeClock()) as up:
        with anyio.fail_after(4):
            result = await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
    assert any(isinstance(e, PartRetry) and "stalled" in e.reason for e in events)
    assert result.remote.ids["md5"] == md5(src)


async def test_single_put_target(sb: Sandbox, tmp_path: Path) -> None:
    src = write(tmp_path / "one.ifc", 5 * PART + 7)
    target = PresignedMultipart(
        lambda n: sb.store.presign_put("single/one.ifc"),
        lambda parts: {"etag": parts[0].etag},
        limits=PartLimits(single=True),
    )
    async with Uploader(cfg()) as up:
        result = await up.upload(src, target)
    assert len(result.parts) == 1
    assert stored_bytes(sb, "single/one.ifc") == src.read_bytes()
    assert result.remote.ids["etag"] == f'"{md5(src)}"'


async def test_caller_cancellation_stops_every_part_and_closes_the_file(
    sb: Sandbox, tmp_path: Path
) -> None:
    src = write(tmp_path / "c.e57", 30 * PART)
    sb.store.faults = FaultPlan(latency=0.05)
    done: list[int] = []

    def hook(e: Event) -> None:
        if isinstance(e, PartDone):
            done.append(e.part)
            if len(done) == 3:
                scope.cancel()

    fds_before = open_fds()
    async with Uploader(cfg(concurrency=4), on_event=hook) as up:
        with anyio.CancelScope() as scope:
            await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
        assert scope.cancel_called
    assert 3 <= len(done) < 30
    assert open_fds() <= fds_before
    await anyio.sleep(0.2)
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert all("write_bytes" not in repr(t) and "_send_part" not in repr(t) for t in others)


async def test_journal_resume_sends_only_missing_parts(sb: Sandbox, tmp_path: Path) -> None:
    src = write(tmp_path / "r.e57", 12 * PART)
    info = FileInfo.of(src)
    journal = tmp_path / "journal.jsonl"
    key = "uploads/r.e57"
    upload_id = sb.store.create_multipart(key)

    def target() -> PresignedMultipart:
        return PresignedMultipart(
            lambda n: sb.store.presign_part(key, upload_id, n),
            lambda parts: {
                "md5": sb.store.complete_multipart(
                    key, upload_id, [(p.number, p.etag) for p in parts]
                ).md5
            },
            limits=PartLimits(min_size=PART),
        )

    first: list[int] = []

    def stop_after_five(e: Event) -> None:
        if isinstance(e, PartDone):
            first.append(e.part)
            if len(first) == 5:
                scope.cancel()

    async with Uploader(cfg(concurrency=1), on_event=stop_after_five, journal=journal) as up:
        with anyio.CancelScope() as scope:
            await up.upload(src, target())
    second: list[int] = []
    on_second: Callable[[Event], None] = lambda e: (  # noqa: E731
        second.append(e.part) if isinstance(e, PartDone) else None
    )
    async with Uploader(cfg(concurrency=1), on_event=on_second, journal=journal) as up:
        result = await up.upload(src, target())
    assert sorted(first + second) == list(range(1, 13))
    assert result.remote.ids["md5"] == md5(src)
    async with Uploader(cfg(), journal=journal) as up:  # done: nothing is sent again
        again = await up.upload(src, target())
    assert again.bytes_sent == 0 and again.remote == result.remote
    assert info.size == 12 * PART


async def test_a_file_that_shrinks_during_upload_fails_clearly(sb: Sandbox, tmp_path: Path) -> None:
    src = write(tmp_path / "g.e57", 20 * PART)
    sb.store.faults = FaultPlan(latency=0.02)

    def hook(e: Event) -> None:
        if isinstance(e, PartDone) and e.part == 1:
            with src.open("r+b") as f:
                f.truncate(2 * PART)

    async with Uploader(cfg(concurrency=2), on_event=hook) as up:
        with pytest.raises(SourceChangedError, match="changed"):
            await up.upload(src, sandbox_target(sb, FileInfo.of(src)))


async def test_uses_the_callers_session(sb: Sandbox, tmp_path: Path) -> None:
    src = write(tmp_path / "own.e57", 2 * PART)
    async with aiohttp.ClientSession() as session:
        async with Uploader(cfg(), session=session) as up:
            result = await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
        assert not session.closed
    assert result.remote.ids["md5"] == md5(src)
