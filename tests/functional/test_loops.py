"""HTTPS PUTs on data loops in threads (``engine.loops``), against the in-process sandbox
behind a TLS terminator with a certificate of the test's own CA.

What is pinned: the bytes arrive whole and really went out on more than one loop thread; all
progress is back on the caller's loop when a PUT returns; a cancelled caller returns only once
the remote PUT has ended (the file descriptor it reads is still open); failures carry the same
verdicts as on one loop; plain HTTP, ``data_loops=1``, a caller's session and ``bwlimit`` start
no thread.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import anyio
import pytest

from engine import (
    BytesSent,
    Event,
    FileStarted,
    PartRejectedError,
    PartRetry,
    RetriesExhaustedError,
    SourceChangedError,
    UploadConfig,
    Uploader,
)
from engine import transport as transport_module
from engine.cli.destinations import sandbox_target
from engine.clock import FakeClock
from engine.loops import _READ_THREADS, AUTO_LOOPS, DataLoops, connection_shares, loop_count
from engine.models import FileInfo, PresignedRemote
from engine.sandbox.faults import FaultPlan
from engine.sandbox.server import Sandbox, SandboxConfig
from engine.source import read_chunk as real_read
from engine.transfer import PartPut
from engine.transport import PutOutcome
from tests.integration.conftest import PrivateCA, _write_ca
from tests.integration.test_s3_https import tls_proxy

pytestmark = pytest.mark.anyio

KiB = 1024
MiB = 1024 * KiB
PART = 256 * KiB


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return _write_ca(tmp_path_factory.mktemp("loops-ca"))


@pytest.fixture
async def sb(tmp_path: Path, ca: PrivateCA) -> AsyncIterator[Sandbox]:
    """The sandbox, its presigned URLs pointing at a TLS terminator in front of it."""
    async with (
        Sandbox(SandboxConfig(data_dir=tmp_path / "sandbox", min_part_size=0)) as s,
        tls_proxy(s.url, ca) as https,
    ):
        s.store.base_url = https
        yield s


def cfg(ca: PrivateCA | None, **kw: Any) -> UploadConfig:
    base: dict[str, Any] = {
        "part_size": PART,
        "chunk_size": 64 * KiB,
        "concurrency": 4,
        "backoff_base": 0.0,
        "ca_bundle": str(ca.ca) if ca else None,
    }
    return UploadConfig(**{**base, **kw})


def source(tmp_path: Path, size: int, name: str = "scan.e57") -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def put_threads() -> tuple[aiohttp.TraceConfig, list[str]]:
    """A trace that notes the thread each request starts on."""
    seen: list[str] = []

    async def started(_: object, __: SimpleNamespace, p: aiohttp.TraceRequestStartParams) -> None:
        seen.append(threading.current_thread().name)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(started)
    return trace, seen


def data_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("upload-engine-data-")}


async def test_an_https_multipart_upload_uses_both_loops_and_arrives_byte_identical(
    sb: Sandbox, tmp_path: Path, ca: PrivateCA
) -> None:
    src = source(tmp_path, 16 * PART + 1234)
    trace, seen = put_threads()
    sent: list[tuple[str, int]] = []  # (thread, bytes) of every progress event

    def on_event(e: Event) -> None:
        if isinstance(e, BytesSent):
            sent.append((threading.current_thread().name, e.bytes))

    async with Uploader(cfg(ca, data_loops=2), trace_configs=[trace], on_event=on_event) as up:
        result = await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
        loops = up._loops
    assert isinstance(loops, DataLoops)
    assert isinstance(result.remote, PresignedRemote)
    assert result.remote.ids["md5"] == hashlib.md5(src.read_bytes()).hexdigest()
    assert sorted(set(seen)) == ["upload-engine-data-0", "upload-engine-data-1"]
    assert len(seen) == 17 and sum(loops.puts) == 17 and min(loops.puts) >= 4
    # progress is relayed to the caller's thread, every byte of it, before each PUT returned
    assert {name for name, _ in sent} == {threading.current_thread().name}
    assert sum(n for _, n in sent) == src.stat().st_size
    assert not any(t.is_alive() for t in loops.threads)  # joined by __aexit__


async def test_each_data_loop_reads_in_a_few_threads(
    sb: Sandbox, tmp_path: Path, ca: PrivateCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = source(tmp_path, 16 * PART)
    lock, active, most = threading.Lock(), [0], [0]

    def slow_read(fd: int, n: int, offset: int, md5: Any) -> bytes:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.02)  # long enough for every PUT in flight to want a read at once
        try:
            return real_read(fd, n, offset, md5)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(transport_module, "read_chunk", slow_read)
    async with Uploader(cfg(ca, data_loops=2, concurrency=16)) as up:
        result = await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
    assert isinstance(result.remote, PresignedRemote)
    assert result.remote.ids["md5"] == hashlib.md5(src.read_bytes()).hexdigest()
    assert most[0] == 2 * _READ_THREADS  # 16 PUTs in flight, 8 on each loop


async def test_plain_http_and_one_loop_start_no_thread(
    sb: Sandbox, tmp_path: Path, ca: PrivateCA
) -> None:
    src = source(tmp_path, 3 * PART)
    before = data_threads()
    trace, seen = put_threads()
    async with Uploader(cfg(ca, data_loops=1), trace_configs=[trace]) as up:
        await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
        assert up._loops is None
        assert data_threads() == before
    sb.store.base_url = sb.url  # plain HTTP, with loops allowed: they stay idle
    async with Uploader(cfg(None, data_loops=2), trace_configs=[trace]) as up:
        await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
        assert isinstance(up._loops, DataLoops) and up._loops.threads == []
        assert data_threads() == before
    assert set(seen) == {threading.current_thread().name}


class _Elsewhere:
    """A ``PartSender`` that is never asked to send (no file is uploaded here)."""

    slots = 2

    async def send(self, put: PartPut, on_progress: Callable[[int], None]) -> PutOutcome:
        raise AssertionError("not called")


async def test_a_callers_session_a_sender_or_a_bwlimit_keep_puts_on_the_callers_loop() -> None:
    async with aiohttp.ClientSession() as session, Uploader(cfg(None), session=session) as up:
        assert up._loops is None
    async with Uploader(cfg(None, data_loops=2), sender=_Elsewhere()) as up:
        assert up._loops is None
    async with Uploader(cfg(None, data_loops=2, bwlimit=1e9)) as up:
        assert up._loops is None
    async with Uploader(cfg(None, data_loops=2)) as up:
        assert isinstance(up._loops, DataLoops)


async def test_a_cancelled_caller_returns_only_after_the_remote_puts_ended(
    sb: Sandbox,
    tmp_path: Path,
    ca: PrivateCA,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = source(tmp_path, 8 * PART)
    returned = threading.Event()  # set once the cancelled upload is back in the caller
    ended: list[tuple[str, bool]] = []  # (thread, after the caller was back) per PUT's end
    began: list[tuple[bool, int]] = []  # per read: (after the caller was back, PUTs ended)

    def slow_read(fd: int, n: int, offset: int, md5: Any) -> bytes:
        began.append((returned.is_set(), len(ended)))
        time.sleep(0.05)  # in a data loop's worker thread: reads are under way at the cancel
        return real_read(fd, n, offset, md5)

    monkeypatch.setattr(transport_module, "read_chunk", slow_read)

    async def failed(_: object, __: object, p: aiohttp.TraceRequestExceptionParams) -> None:
        await asyncio.sleep(0.1)  # the cancelled PUT takes its time to end
        ended.append((threading.current_thread().name, returned.is_set()))

    trace = aiohttp.TraceConfig()
    trace.on_request_exception.append(failed)
    scope = anyio.CancelScope()

    def on_event(e: Event) -> None:
        if isinstance(e, BytesSent):  # a first chunk went out: every PUT is mid-body
            scope.cancel()

    async with Uploader(cfg(ca, data_loops=2), on_event=on_event, trace_configs=[trace]) as up:
        with scope:
            await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
        returned.set()
        assert scope.cancelled_caught
        loops = up._loops
        assert isinstance(loops, DataLoops) and sum(loops.puts) == 4  # concurrency=4
        for lp in loops._loops:  # nothing of them is left but each loop's own serving task
            left = asyncio.run_coroutine_threadsafe(_other_tasks(), lp.loop).result(5)
            assert left == ["_Loop._serve"]
        await anyio.sleep(0.2)  # what a PUT left running would do now
    # every PUT ended (its connection closed) on a data loop before the caller was back, and
    # no read of the file began once they had (a read begun before, in a worker thread when
    # aiohttp cancelled the body's writer, may still end on the closed descriptor: dropped)
    assert sorted(ended) == [(f"upload-engine-data-{i}", False) for i in (0, 0, 1, 1)]
    assert began and all(not late and n < 4 for late, n in began), began
    gc.collect()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def _other_tasks() -> list[str]:
    """What else runs on this loop: the names of its other tasks' coroutines."""
    me = asyncio.current_task()
    return [t.get_coro().__qualname__ for t in asyncio.all_tasks() if t is not me]  # type: ignore[union-attr]


async def _failure(sb: Sandbox, src: Path, config: UploadConfig) -> tuple[str, list[str]]:
    """The one error and the retry reasons (in part order) of an upload that fails."""
    retries: list[PartRetry] = []

    def on_event(e: Event) -> None:
        if isinstance(e, PartRetry):
            retries.append(e)

    async with Uploader(config, on_event=on_event, clock=FakeClock()) as up:
        with pytest.raises((PartRejectedError, RetriesExhaustedError)) as failed:
            await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
    return str(failed.value), [r.reason for r in sorted(retries, key=lambda r: r.part)]


@pytest.mark.parametrize("fault", ["503", "reset"])
async def test_a_transient_failure_gets_the_same_verdict_as_on_one_loop(
    sb: Sandbox, tmp_path: Path, ca: PrivateCA, fault: str
) -> None:
    src = source(tmp_path, 2 * PART, f"{fault}.e57")
    key = f"uploads/{src.name}"
    sb.store.faults = FaultPlan(schedule={(key, 1, i): fault for i in range(4)})
    one = await _failure(sb, src, cfg(ca, data_loops=1, max_attempts=2))
    two = await _failure(sb, src, cfg(ca, data_loops=2, max_attempts=2))
    assert one[0].startswith("part 1 failed 2 times; last: ")
    if fault == "503":
        assert one == two
    else:  # how a reset surfaces depends on timing; that it is a retry does not
        assert two[0].startswith("part 1 failed 2 times; last: ") and len(two[1]) == 1


@pytest.mark.usefixtures("sb")
async def test_an_untrusted_certificate_is_refused_at_once_as_on_one_loop(
    sb: Sandbox, tmp_path: Path
) -> None:
    src = source(tmp_path, PART // 2)  # one part: which part fails first is not a race
    one = await _failure(sb, src, cfg(None, data_loops=1))
    two = await _failure(sb, src, cfg(None, data_loops=2))
    assert one == two
    assert "TLS certificate of 127.0.0.1 is not trusted" in one[0] and one[1] == []


async def _shrunk(sb: Sandbox, src: Path, config: UploadConfig) -> str:
    """The error of an upload whose file loses its tail once the upload has begun."""

    def on_event(e: Event) -> None:
        if isinstance(e, FileStarted):
            os.truncate(src, PART // 2)

    async with Uploader(config, on_event=on_event) as up:
        with pytest.raises(SourceChangedError) as failed:
            await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
    return str(failed.value)


async def test_a_source_error_on_a_data_loop_fails_the_file_as_on_one_loop(
    sb: Sandbox, tmp_path: Path, ca: PrivateCA
) -> None:
    one = await _shrunk(sb, source(tmp_path, PART, "one.e57"), cfg(ca, data_loops=1))
    two = await _shrunk(sb, source(tmp_path, PART, "two.e57"), cfg(ca, data_loops=2))
    assert one.replace("one.e57", "two.e57") == two
    assert "shorter than planned" in two


@pytest.mark.parametrize(
    ("data_loops", "budget", "cpus", "want"),
    [
        (None, 64, 2, 1),
        (None, 64, 4, 2),
        (None, 64, 16, AUTO_LOOPS),
        (None, 1, 8, 1),
        (3, 2, 8, 2),
        (1, 64, 8, 1),
    ],
)
def test_how_many_loops(data_loops: int | None, budget: int, cpus: int, want: int) -> None:
    config = UploadConfig(data_loops=data_loops, concurrency=budget)
    assert loop_count(config, cpus) == want


def test_connections_are_shared_out_to_the_budget() -> None:
    assert connection_shares(64, 3) == [22, 21, 21]
    assert connection_shares(2, 2) == [1, 1]
    with pytest.raises(ValueError, match="cannot share 1 connections over 2 loops"):
        connection_shares(1, 2)
