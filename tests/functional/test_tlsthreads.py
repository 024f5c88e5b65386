"""HTTPS PUTs on blocking sockets in worker threads (``engine.tlsthreads``, the default for
HTTPS), against the in-process sandbox behind a TLS terminator with the test's own CA.

What is pinned: the bytes arrive whole, sent by the threads (not the caller's loop), with all
progress back on the caller's thread; connections are kept alive and reused; a cancelled
caller returns only once every thread let go of the file; failures carry the verdicts the
caller's loop gives them (a 503 retried, an untrusted certificate refused at once, a file that
shrank a source error).
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import BytesSent, Event, UploadConfig, Uploader
from engine import tlsthreads as tlsthreads_module
from engine.cli.destinations import sandbox_target
from engine.loops import DataLoops
from engine.models import FileInfo
from engine.sandbox.faults import FaultPlan
from engine.sandbox.server import Sandbox
from engine.source import read_into as real_read
from engine.tlsthreads import TLSThreads
from tests.functional.test_loops import PART, _failure, _shrunk, ca, cfg, sb, source
from tests.integration.conftest import PrivateCA

pytestmark = pytest.mark.anyio

__all__ = ["ca", "sb"]  # the fixtures, shared with test_loops


def threads_cfg(ca: PrivateCA | None, **kw: Any) -> UploadConfig:
    return cfg(ca, data_loops=None, **kw)


async def test_https_parts_go_through_the_threads_and_arrive_byte_identical(
    sb: Sandbox, tmp_path: Path, ca: PrivateCA
) -> None:
    src = source(tmp_path, 12 * PART + 777)
    caller = threading.current_thread().name
    sent: list[tuple[str, int]] = []

    def on_event(e: Event) -> None:
        if isinstance(e, BytesSent):
            sent.append((threading.current_thread().name, e.bytes))

    async with Uploader(threads_cfg(ca), on_event=on_event) as up:
        result = await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
        threads = up._loops
        assert isinstance(threads, TLSThreads)
        assert threads.puts == 13  # every part went through the threads
        assert len(threads._idle[("127.0.0.1", int(sb.store.base_url.rsplit(":", 1)[1]))]) <= 4
    assert result.remote.ids["md5"] == hashlib.md5(src.read_bytes()).hexdigest()
    assert {t for t, _ in sent} == {caller}  # progress comes back to the caller's thread
    assert sum(n for _, n in sent) == src.stat().st_size


async def test_plain_http_stays_on_the_callers_loop(tmp_path: Path) -> None:
    async with Sandbox() as plain:
        src = source(tmp_path, 2 * PART)
        async with Uploader(threads_cfg(None)) as up:
            await up.upload(src, sandbox_target(plain, FileInfo.of(src)))
            threads = up._loops
            assert isinstance(threads, TLSThreads) and threads.puts == 0


async def test_a_cancelled_caller_returns_only_after_every_thread_let_go(
    sb: Sandbox, tmp_path: Path, ca: PrivateCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = source(tmp_path, 8 * PART)
    returned = threading.Event()
    reads: list[tuple[bool, bool]] = []  # per read: did it begin, did it end, after the return

    def slow_read(fd: int, view: memoryview, offset: int, md5: Any) -> None:
        began = returned.is_set()
        time.sleep(0.05)  # reads are under way in the threads when the caller is cancelled
        try:
            real_read(fd, view, offset, md5)
        finally:
            reads.append((began, returned.is_set()))

    monkeypatch.setattr(tlsthreads_module, "read_into", slow_read)
    scope = anyio.CancelScope()

    def on_event(e: Event) -> None:
        if isinstance(e, BytesSent):
            scope.cancel()

    async with Uploader(threads_cfg(ca), on_event=on_event) as up:
        with scope:
            await up.upload(src, sandbox_target(sb, FileInfo.of(src)))
        returned.set()
        assert scope.cancelled_caught
        await anyio.sleep(0.3)  # what a thread left running would do now
    assert reads, "no read happened"
    # no read began or ended once the caller was back: every thread had let go of the file
    assert all(not began and not after for began, after in reads), reads


async def test_a_503_is_retried_as_on_the_callers_loop(
    sb: Sandbox, tmp_path: Path, ca: PrivateCA
) -> None:
    src = source(tmp_path, 2 * PART, "busy.e57")
    key = f"uploads/{src.name}"
    sb.store.faults = FaultPlan(schedule={(key, 1, i): "503" for i in range(4)})
    one = await _failure(sb, src, cfg(ca, data_loops=1, max_attempts=2))
    threads = await _failure(sb, src, threads_cfg(ca, max_attempts=2))
    assert one == threads
    assert one[0].startswith("part 1 failed 2 times; last: HTTP 503")


@pytest.mark.usefixtures("sb")
async def test_an_untrusted_certificate_is_refused_at_once_as_on_the_callers_loop(
    sb: Sandbox, tmp_path: Path
) -> None:
    src = source(tmp_path, PART // 2)
    one = await _failure(sb, src, cfg(None, data_loops=1))
    threads = await _failure(sb, src, threads_cfg(None))
    assert one == threads
    assert "TLS certificate of 127.0.0.1 is not trusted" in one[0] and one[1] == []


async def test_a_file_that_shrank_is_a_source_error_as_on_the_callers_loop(
    sb: Sandbox, tmp_path: Path, ca: PrivateCA
) -> None:
    one = await _shrunk(sb, source(tmp_path, PART, "one.e57"), cfg(ca, data_loops=1))
    threads = await _shrunk(sb, source(tmp_path, PART, "two.e57"), threads_cfg(ca))
    assert one.replace("one.e57", "two.e57") == threads
    assert "shorter than planned" in threads


async def test_which_sender_moves_https() -> None:
    async with Uploader(UploadConfig()) as up:
        assert isinstance(up._loops, TLSThreads)  # the default: worker threads
    async with Uploader(UploadConfig(data_loops=1)) as up:
        assert up._loops is None  # the caller's loop
    async with Uploader(UploadConfig(data_loops=2)) as up:
        assert isinstance(up._loops, DataLoops)  # event loops in threads
    async with Uploader(UploadConfig(bwlimit=1e6)) as up:
        assert up._loops is None  # the throttle is the caller's loop's
