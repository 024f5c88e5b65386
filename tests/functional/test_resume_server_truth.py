"""The server is the truth, the journal a hint: a "done" in the journal skips a file only when
the server confirms it, and a session or upload that had to be created anew voids everything the
journal held below it.

Two sandboxes started one after the other on the same port are "the same endpoint" to the
journal, and hand out the same seeded ids: exactly the collision of a second server that knows
nothing of what the journal says was sent.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine import Event, KiB, Phase, UploadConfig, Uploader
from engine.clock import FakeClock
from engine.models import FileInfo, PartLimits, PartRequest, PartResult, PartSpec, PresignedRemote
from engine.providers.matterport import Matterport, MatterportCredentials, MatterportResult
from engine.providers.speckle import Speckle, SpeckleCredentials
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.ifc import write_sample_ifc
from engine.sandbox.matterport import MatterportPlane, MatterportSandboxConfig
from engine.sandbox.server import Sandbox, SandboxConfig
from engine.sandbox.speckle import SpecklePlane, SpeckleSandboxConfig
from engine.target import Target, TargetContext

pytestmark = pytest.mark.anyio

PART = 256 * KiB
ORGS = frozenset({"sandbox-org", "another-org"})
UNCONFIRMED = "the journal says it was uploaded, but"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def server(port: int = 0, **matterport: Any) -> AsyncIterator[Sandbox]:
    """A fresh sandbox (seed 0: the same ids as every other one) on ``port``."""
    matterport.setdefault("min_part_size", PART)
    matterport.setdefault("model_delay", 0.02)
    config = SandboxConfig(
        port=port,
        min_part_size=0,
        matterport=MatterportSandboxConfig(organizations=ORGS, **matterport),
        speckle=SpeckleSandboxConfig(step_delay=0.0),
    )
    async with Sandbox(config) as sb:
        yield sb


def matterport_plane(sb: Sandbox) -> MatterportPlane:
    return next(p for p in sb.planes if isinstance(p, MatterportPlane))


def speckle_plane(sb: Sandbox) -> SpecklePlane:
    return next(p for p in sb.planes if isinstance(p, SpecklePlane))


def sent(sb: Sandbox) -> int:
    """Bytes the blob store took in this sandbox's life."""
    return int(sb.store.stats()["bytes_received"])


async def import_(
    sb: Sandbox,
    paths: Sequence[Path],
    journal: Path,
    *,
    organization: str = "sandbox-org",
    events: list[Event] | None = None,
    force: bool = False,
) -> MatterportResult:
    client = Matterport(
        MatterportCredentials("sandbox-token-id", "sandbox-token-secret"),
        endpoint=f"{sb.url}/api/import/graph",
        poll_interval=0.01,
    )
    hook = events.append if events is not None else None
    config = UploadConfig(part_size=PART, backoff_base=0.0)
    async with Uploader(
        config, journal=journal, on_event=hook, clock=FakeClock(), force=force
    ) as up:
        return await client.import_files(up, list(paths), organization=organization)


def e57(tmp_path: Path, name: str = "a.e57", seed: int = 1) -> tuple[Path, str]:
    path = tmp_path / name
    return path, write_sample_e57(path, 600 * KiB, seed=seed)


def said(events: list[Event], text: str) -> list[str]:
    return [e.message for e in events if isinstance(e, Phase) and text in e.message]


async def imported_once(path: Path, journal: Path) -> tuple[int, MatterportResult]:
    """``path`` imported into a sandbox that is then gone: (its port, what it made)."""
    port = free_port()
    async with server(port) as first_sb:
        return port, await import_(first_sb, [path], journal)


# ---- Matterport ----------------------------------------------------------------------------------


async def test_a_second_server_handing_out_the_journaled_session_id_gets_the_file(
    tmp_path: Path,
) -> None:
    """The issue's collision: the same endpoint, a fresh server, the session id the journal
    knows. The file is uploaded (not taken as done), and the commit succeeds."""
    path, md5 = e57(tmp_path)
    journal = tmp_path / "journal.jsonl"
    port, first = await imported_once(path, journal)
    events: list[Event] = []
    async with server(port) as sb:
        mp = matterport_plane(sb)
        second = await import_(sb, [path], journal, events=events)
        assert second.session_id == first.session_id  # the seeded id, handed out again
        (upload,) = second.files
        assert upload.skipped is None and upload.bytes_sent == path.stat().st_size
        assert sent(sb) == path.stat().st_size
        session = mp.session(second.session_id)
        assert session.files["file1"].status == "COMPLETED"
        assert mp.md5_of(second.session_id, "file1") == md5
        assert second.model_id and session.model_id == second.model_id
        assert mp.calls["commitImportSession"] == 1 and mp.errors["request.invalid"] == 0
    assert second.skipped is None


async def test_a_journaled_session_the_server_holds_for_someone_else_is_not_resumed(
    tmp_path: Path,
) -> None:
    path, md5 = e57(tmp_path)
    other, _ = e57(tmp_path, "other.e57", seed=2)
    journal = tmp_path / "journal.jsonl"
    port, first = await imported_once(path, journal)
    async with server(port) as sb:
        mp = matterport_plane(sb)
        # Someone else's import takes the seeded id first, for another organization.
        theirs = await import_(sb, [other], tmp_path / "theirs.jsonl", organization="another-org")
        assert theirs.session_id == first.session_id
        events: list[Event] = []
        ours = await import_(sb, [path], journal, events=events)
        assert ours.session_id != theirs.session_id
        assert said(events, "belongs to organization another-org: starting anew")
        assert ours.files[0].bytes_sent == path.stat().st_size
        assert mp.md5_of(ours.session_id, "file1") == md5
        assert mp.session(theirs.session_id).files["file1"].name == "other.e57"  # untouched


async def test_a_journaled_model_the_server_does_not_have_starts_a_new_session(
    tmp_path: Path,
) -> None:
    """Same organization, same file, the seeded session id again, but that session made another
    model than the journal's: it is not the journal's session."""
    path, md5 = e57(tmp_path)
    other, _ = e57(tmp_path, "other.e57", seed=2)
    journal = tmp_path / "journal.jsonl"
    port, first = await imported_once(path, journal)
    async with server(port) as sb:
        mp = matterport_plane(sb)
        # Another run takes the seeded session id first, with one more file: more ids drawn
        # before its model's, so another model id.
        before = await import_(sb, [path, other], tmp_path / "elsewhere.jsonl")
        assert before.session_id == first.session_id and before.model_id != first.model_id
        events: list[Event] = []
        ours = await import_(sb, [path], journal, events=events)
    assert said(events, f"has model {before.model_id}, not {first.model_id}: starting anew")
    assert ours.session_id != before.session_id and ours.skipped is None
    assert ours.files[0].bytes_sent == path.stat().st_size
    assert mp.md5_of(ours.session_id, "file1") == md5


async def test_a_repeat_is_confirmed_by_the_server_and_sends_nothing(tmp_path: Path) -> None:
    path, _ = e57(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with server() as sb:
        first = await import_(sb, [path], journal)
        before = sent(sb)
        again = await import_(sb, [path], journal)
        assert sent(sb) == before  # not a byte
    assert (again.session_id, again.model_id) == (first.session_id, first.model_id)
    assert again.skipped is not None and again.skipped.reason == "already uploaded"
    assert again.skipped.since  # when the journal saw it finish
    assert [f.bytes_sent for f in again.files] == [0] and again.files[0].skipped is not None


async def test_force_imports_again_as_a_new_model(tmp_path: Path) -> None:
    path, md5 = e57(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with server() as sb:
        mp = matterport_plane(sb)
        first = await import_(sb, [path], journal)
        events: list[Event] = []
        forced = await import_(sb, [path], journal, events=events, force=True)
        assert forced.session_id != first.session_id and forced.model_id != first.model_id
        assert forced.skipped is None and forced.files[0].bytes_sent == path.stat().st_size
        assert mp.md5_of(forced.session_id, "file1") == md5
        assert said(events, "a new import session, as forced")
        again = await import_(sb, [path], journal)  # the forced import is the journal's now
    assert (again.session_id, again.model_id) == (forced.session_id, forced.model_id)
    assert again.skipped is not None


# ---- Speckle -------------------------------------------------------------------------------------


async def speckle_upload(
    sb: Sandbox,
    path: Path,
    journal: Path,
    *,
    events: list[Event] | None = None,
    force: bool = False,
) -> Any:
    client = Speckle(SpeckleCredentials("sandbox-token"), server=sb.url, poll_interval=0.01)
    hook = events.append if events is not None else None
    async with Uploader(
        UploadConfig(), journal=journal, on_event=hook, clock=FakeClock(), force=force
    ) as up:
        return await client.upload(up, path, project_id="sandbox-project")


async def test_speckle_a_repeat_is_confirmed_and_a_second_server_gets_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tower.ifc"
    md5 = write_sample_ifc(path, 120_000, seed=3)
    journal = tmp_path / "journal.jsonl"
    port = free_port()
    async with server(port) as sb:
        first = await speckle_upload(sb, path, journal)
        again = await speckle_upload(sb, path, journal)
        assert sent(sb) == path.stat().st_size  # the repeat sent nothing
        assert again.upload.skipped is not None and again.version_id == first.version_id
        forced = await speckle_upload(sb, path, journal, force=True)
        assert forced.version_id != first.version_id  # a new version of the same model
        assert forced.model_id == first.model_id
        assert len(speckle_plane(sb).versions) == 2
    events: list[Event] = []
    async with server(port) as sb:  # a fresh server: it has no such ingestion
        other = await speckle_upload(sb, path, journal, events=events)
        p = speckle_plane(sb)
        assert other.upload.skipped is None and sent(sb) == path.stat().st_size
        assert p.ingested_md5[other.file_id] == md5 and list(p.versions) == [other.version_id]
    assert said(events, UNCONFIRMED)


# ---- any target ----------------------------------------------------------------------------------


class OneObject(Target):
    """A target of the tests' own into the sandbox's store, with no ``confirm`` of its own."""

    kind = "one-object"
    remote_type = PresignedRemote

    def __init__(self, sb: Sandbox, key: str) -> None:
        self.sb, self.key = sb, key

    async def prepare(self, ctx: TargetContext) -> PartLimits:
        return PartLimits(single=True)

    async def part_request(
        self, part: PartSpec, ctx: TargetContext, *, refresh: bool
    ) -> PartRequest:
        return PartRequest(self.sb.store.presign_put(self.key))

    async def complete(self, parts: Sequence[PartResult], ctx: TargetContext) -> PresignedRemote:
        return PresignedRemote(ids={"etag": parts[0].etag})


async def test_a_target_that_cannot_confirm_is_uploaded_again(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"x" * 5000)
    journal = tmp_path / "journal.jsonl"
    async with server() as sb:
        for _ in range(2):
            events: list[Event] = []
            async with Uploader(journal=journal, on_event=events.append) as up:
                result = await up.upload(path, OneObject(sb, "one/x.bin"))
            assert result.skipped is None and result.bytes_sent == 5000
        assert sent(sb) == 10_000
    assert said(events, f"{UNCONFIRMED} a one-object destination cannot confirm earlier uploads")
    assert FileInfo.of(path).size == 5000
