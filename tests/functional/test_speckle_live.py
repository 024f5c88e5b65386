"""Live status over ``projectModelIngestionUpdated``: one WebSocket per project shared by its
files, polling when the socket cannot be opened or drops, a wait that ends at once on a
graceful stop, and the processing timeout from the command line.

These waits run on the wall clock: the sandbox's ingestions and its subscription events advance
in real time (a few tenths of a second each).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute

from engine import Event, InterruptedUpload, Phase, Uploader, UploadResult
from engine.cli import main
from engine.clock import SystemClock
from engine.journal import IngestionStarted, UploadVoided
from engine.providers.speckle import SpeckleResult
from engine.sandbox.server import Sandbox
from engine.sandbox.speckle import SpeckleSandboxConfig
from tests.functional.servers import served_sandbox
from tests.functional.test_speckle import (
    CONFIG,
    PROJECT,
    TOKEN,
    assert_ingested_once,
    client,
    ifc,
    journal_state,
    plane,
    sandbox,
    upload,
)

pytestmark = pytest.mark.anyio


# ---- a loopback TCP relay whose connections can be cut -------------------------------------------


@dataclass
class Relay:
    """Forwards each connection to ``port``; ``cut()`` drops every one of them (as a proxy or
    a load balancer that closes idle sockets would)."""

    port: int = 0
    streams: list[anyio.abc.SocketStream] = field(default_factory=list)
    cutting: anyio.Event = field(default_factory=anyio.Event)

    def cut(self) -> None:
        self.cutting.set()


@asynccontextmanager
async def relay(to_port: int) -> AsyncIterator[Relay]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    r = Relay(listener.extra(SocketAttribute.local_port))

    async def pipe(a: anyio.abc.SocketStream, b: anyio.abc.SocketStream) -> None:
        try:
            async for chunk in a:
                await b.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        await b.aclose()

    async def handle(downstream: anyio.abc.SocketStream) -> None:
        upstream = await anyio.connect_tcp("127.0.0.1", to_port)
        r.streams += [downstream, upstream]
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipe, downstream, upstream)
            tg.start_soon(pipe, upstream, downstream)

    async def cutter() -> None:
        await r.cutting.wait()
        for stream in r.streams:
            await stream.aclose()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        tg.start_soon(cutter)
        yield r
        tg.cancel_scope.cancel()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# ---- one connection per project ------------------------------------------------------------------


async def test_the_files_of_a_project_share_one_connection(tmp_path: Path) -> None:
    files = [ifc(tmp_path, f"part-{n}.ifc", 50_000) for n in range(6)]
    async with sandbox(step_delay=0.1, processing_steps=3) as sb:
        speckle = client(sb, poll_interval=0.05)  # a poll every 1.5 s at most while live
        targets = [speckle.target(project_id=PROJECT) for _ in files]
        async with Uploader(CONFIG, clock=SystemClock()) as up:
            work = [(path, t) for (path, _), t in zip(files, targets, strict=True)]
            results = await up.upload_many(work, files_at_once=3)  # some wait, some upload
            pool = speckle.session(up.services).live
        stats = plane(sb).stats()
        assert pool.opened == stats["websockets"] == 1  # one socket for the project, kept
        # between files (a file that starts waiting reuses it)
        assert stats["subscriptions"] == 6  # one subscription per ingestion on it
        for (_, digest), result in zip(files, results, strict=True):
            assert isinstance(result, UploadResult), result
            assert_ingested_once_of_many(sb, SpeckleResult.from_upload(result), digest)
        # The status came over the socket: one poll each (at once, before the first event).
        assert [t.calls.count("Ingestion") for t in targets] == [1] * 6


def assert_ingested_once_of_many(sb: Sandbox, result: SpeckleResult, digest: str) -> None:
    p = plane(sb)
    assert p.ingested_md5[result.file_id] == digest
    assert p.versions[result.version_id].model_id == result.model_id
    assert p.ingestions[result.ingestion_id].file_id == result.file_id


# ---- falling back to polling ---------------------------------------------------------------------


async def test_polling_when_the_socket_cannot_be_opened(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    async with sandbox(step_delay=0.1, processing_steps=2) as sb:
        speckle = client(sb, poll_interval=0.05)
        speckle.ws_endpoint = sb.url.replace("http", "ws", 1) + "/no-socket-here"  # a 404
        target = speckle.target(project_id=PROJECT)
        result, _ = await upload(sb, path, target=target, clock=SystemClock())
        assert plane(sb).stats()["subscriptions"] == 0
        assert target.calls.count("Ingestion") > 1  # polled to the end
        assert_ingested_once(sb, result, digest)


async def test_polling_when_the_socket_drops(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    async with sandbox(step_delay=0.2, processing_steps=2) as sb, relay(_port(sb.url)) as r:
        speckle = client(sb, poll_interval=0.05)
        speckle.ws_endpoint = f"ws://127.0.0.1:{r.port}/graphql"

        def cut_when_waiting(event: Event) -> None:
            if isinstance(event, Phase) and event.message.startswith("ingestion queued"):
                r.cut()

        target = speckle.target(project_id=PROJECT)
        result, _ = await upload(
            sb, path, target=target, clock=SystemClock(), on_event=cut_when_waiting
        )
        assert plane(sb).stats()["subscriptions"] == 1  # it was live, then it was cut
        assert target.calls.count("Ingestion") > 1  # and polled from then on
        assert_ingested_once(sb, result, digest)


# ---- stopping and the processing timeout ---------------------------------------------------------


@pytest.mark.parametrize("api", ["v3", "v2"])  # live, and polling
async def test_a_graceful_stop_ends_the_wait_at_once(tmp_path: Path, api: str) -> None:
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox(speckle_api=api, step_delay=30.0) as sb:
        speckle = client(sb, poll_interval=1.0)
        target = speckle.target(project_id=PROJECT)
        stopped: list[float] = []
        uploader: list[Uploader] = []

        def stop_when_waiting(event: Event) -> None:
            waiting = isinstance(event, Phase) and event.message.startswith("ingestion ")
            if waiting and not stopped:
                stopped.append(time.monotonic())
                uploader[0].drain()

        config = dict(clock=SystemClock(), journal=journal, on_event=stop_when_waiting)
        async with Uploader(CONFIG, **config) as up:  # type: ignore[arg-type]
            uploader.append(up)
            with pytest.raises(InterruptedUpload, match="stopped while Speckle") as err:
                await up.upload(path, target)
        assert time.monotonic() - stopped[0] < 1.0  # not the next poll, not the 30 s
        assert "rerun to keep waiting" in str(err.value)
        st = journal_state(journal, target, path)
        assert st.get(IngestionStarted) is not None and st.get(UploadVoided) is None

        p = plane(sb)
        p.config = replace(p.config, step_delay=0.0)
        result, again = await upload(sb, path, journal=journal, clock=SystemClock())
        assert "StartFileIngestion" not in again.calls and "StartFileImport" not in again.calls
        assert p.ingested_md5[result.file_id] == digest and list(p.versions) == [result.version_id]


def test_the_processing_timeout_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = ifc(tmp_path, "tower.ifc")
    monkeypatch.setenv("SPECKLE_TOKEN", TOKEN)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    state = tmp_path / "state"
    with served_sandbox(speckle=SpeckleSandboxConfig(step_delay=60.0)) as sb:
        argv = ["upload", str(path), "--to", "speckle", "--project", PROJECT]
        argv += ["--server", sb.url, "--state-dir", str(state)]
        started = time.monotonic()
        code = main([*argv, "--processing-timeout", "1.5"])
        _, err = capsys.readouterr()
        assert time.monotonic() - started < 15
        assert code == 1 and "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("upload-engine: ") and "still queued after 1.5 s" in last
        assert "--processing-timeout" in last
        for flag, bad in (
            ("--processing-timeout", "0"),
            ("--processing-timeout", "soon"),
            ("--speckle-api", "v4"),
        ):
            with pytest.raises(SystemExit) as usage:  # argparse: one line, exit 2
                main([*argv, flag, bad])
            assert usage.value.code == 2
            assert f"argument {flag}: " in capsys.readouterr().err
