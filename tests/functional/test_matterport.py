"""The Matterport provider end to end against the in-process sandbox, over loopback.

No mocks: the sandbox executes the seed's GraphQL documents against its SDL, signs and checks
every presigned URL, stores parts on disk, assembles them, checks the result as E57 and records
its MD5. Every successful import is checked byte for byte (the sandbox's MD5 of the assembled
file equals the source's). Part limits are scaled down (256 KiB parts) so tests stay fast, and
the uploaders run on a ``FakeClock``: backoff and polling waits are virtual time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import pytest

from engine import (
    AuthenticationError,
    ConflictError,
    Event,
    FormatError,
    InterruptedUpload,
    InvalidRequestError,
    KiB,
    MiB,
    NotFoundError,
    PartDone,
    PartRetry,
    PermissionDeniedError,
    Phase,
    ProcessingError,
    QuotaExceededError,
    ServiceError,
    SourceChangedError,
    SourceError,
    UploadConfig,
    Uploader,
)
from engine.clock import FakeClock
from engine.errors import TooLargeError
from engine.graphql import GraphQLFailure
from engine.journal import Journal, matterport_file_key
from engine.models import MAX_PUT_SIZE, FileInfo, PartResult, PartSpec
from engine.plan import plan_parts
from engine.providers.matterport import (
    ADD_E57_OBJECT,
    ADD_IMPORT_SESSION,
    BEGIN_UPLOAD,
    REQUEST_PART_UPLOAD,
    Matterport,
    MatterportCredentials,
    MatterportFileRemote,
    MatterportResult,
    classify,
)
from engine.providers.matterport.target import match_held, read_limits
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.faults import FaultPlan
from engine.sandbox.matterport import MatterportPlane, MatterportSandboxConfig
from engine.sandbox.server import Sandbox, SandboxConfig

pytestmark = pytest.mark.anyio

CREDENTIALS = MatterportCredentials("sandbox-token-id", "sandbox-token-secret")
ORG = "sandbox-org"
PART = 256 * KiB
CHANGED = "changed since the last run: uploading it from the start"


@asynccontextmanager
async def sandbox(
    faults: FaultPlan | None = None, **plane: Any
) -> AsyncIterator[tuple[Sandbox, MatterportPlane]]:
    plane.setdefault("min_part_size", PART)
    plane.setdefault("model_delay", 0.02)
    config = SandboxConfig(
        min_part_size=0,  # the plane announces and enforces the minimum
        faults=faults or FaultPlan(),
        matterport=MatterportSandboxConfig(**plane),
    )
    async with Sandbox(config) as sb:
        (mp,) = [p for p in sb.planes if isinstance(p, MatterportPlane)]
        yield sb, mp


def provider(
    sb: Sandbox,
    credentials: MatterportCredentials = CREDENTIALS,
    *,
    model_deadline: float = 600.0,
) -> Matterport:
    """A client of the sandbox's plane. With the tests' ``FakeClock`` the polls for the model
    do not wait, so ``model_deadline`` is virtual time: what bounds a wait in practice is the
    sandbox's real ``model_delay``."""
    return Matterport(
        credentials,
        endpoint=f"{sb.url}/api/import/graph",
        poll_interval=0.01,
        model_deadline=model_deadline,
    )


def uploader(
    events: list[Event] | None = None,
    journal: Path | None = None,
    *,
    clock: FakeClock | None = None,
    **config: Any,
) -> Uploader:
    config.setdefault("part_size", PART)
    config.setdefault("concurrency", 4)
    config.setdefault("backoff_base", 0.0)
    hook = events.append if events is not None else None
    return Uploader(
        UploadConfig(**config), on_event=hook, journal=journal, clock=clock or FakeClock()
    )


def sample(tmp_path: Path, name: str, size: int, seed: int) -> tuple[Path, str]:
    path = tmp_path / name
    return path, write_sample_e57(path, size, seed=seed)


def assert_arrived(mp: MatterportPlane, result: MatterportResult, md5s: Sequence[str]) -> None:
    """One model from one session, and every file byte-identical to its source."""
    session = mp.session(result.session_id)
    assert session.failure is None
    assert session.model_id == result.model_id and result.model_id
    assert [r.path.name for r in result.files] == [f.name for f in session.files.values()]
    for (client_id, record), md5 in zip(session.files.items(), md5s, strict=True):
        assert record.status == "COMPLETED"
        assert mp.md5_of(result.session_id, client_id) == md5


def puts(sb: Sandbox) -> dict[int, int]:
    """PUT attempts by S3 part number, over every object of the run."""
    out: dict[int, int] = {}
    for by_part in sb.store.stats()["puts_by_part"].values():
        for number, count in by_part.items():
            out[int(number)] = out.get(int(number), 0) + count
    return out


def begins(journal: Path) -> Counter[tuple[str, str]]:
    """How often the journal began each Matterport file key: (session id, path) -> count."""
    keys = [
        orjson.loads(r["key"])
        for r in map(orjson.loads, journal.read_bytes().splitlines())
        if r["op"] == "begin"
    ]
    return Counter((k[2], k[3]) for k in keys if k[0] == "matterport-file")


async def settle(sb: Sandbox) -> None:
    """Wait until every PUT the sandbox began has been answered or seen its client go (a
    cancelled client's last requests are still being read for a moment)."""
    with anyio.fail_after(5):
        await anyio.sleep(0.05)
        while True:
            st = sb.store.stats()
            if st["requests"] == sum(st["responses"].values()) + st["disconnects"]:
                return
            await anyio.sleep(0.01)


# ---- the flow ------------------------------------------------------------------------------------


async def test_one_file_in_three_parts_sends_the_seeds_operations_in_order(tmp_path: Path) -> None:
    path, md5 = sample(tmp_path, "scan.e57", 700 * KiB, seed=1)  # 256 + 256 + 188 KiB
    events: list[Event] = []
    clock = FakeClock()
    # model_delay: the first poll finds no model, so the import waits on the virtual clock
    async with sandbox(model_delay=0.1) as (sb, mp), uploader(events, clock=clock) as up:
        result = await provider(sb).import_files(
            up, [path], organization=ORG, name="Demo", description="three parts"
        )
    assert_arrived(mp, result, [md5])
    assert result.operations == (
        "addImportSession",
        "AddE57Object",
        "beginUpload",
        "requestPartUpload",  # part 0 with the whole size: learn minSize/maxSize
        "requestPartUpload",  # parts 0, 1, 2 (zero-based), in any order
        "requestPartUpload",
        "requestPartUpload",
        "completeUpload",
        "commitImportSession",
        *(("importSession",) * (len(result.operations) - 9)),
    )
    assert result.operations[-1] == "importSession"
    assert mp.call_log[:9] == [
        "addImportSession",
        "addE57Object",
        "beginUpload",
        *["requestPartUpload"] * 4,
        "completeUpload",
        "commitImportSession",
    ]
    session = mp.session(result.session_id)
    assert (session.name, session.description) == ("Demo", "three parts")
    (file,) = session.files.values()
    assert (file.client_id, file.name, file.type, file.size) == (
        "file1",
        "scan.e57",
        "application/octet-stream",
        path.stat().st_size,
    )
    assert sorted(file.requested) == [0, 1, 2]  # zero-based part indexes on the wire
    assert [p.size for p in file.parts] == [PART, PART, path.stat().st_size - 2 * PART]
    (upload,) = result.files
    assert [p.number for p in upload.parts] == [1, 2, 3]
    assert upload.remote == MatterportFileRemote(
        session_id=result.session_id, client_id="file1", file_id=file.id
    )
    assert result.bytes == path.stat().st_size and result.throughput > 0
    assert result.seconds == pytest.approx(sum(clock.slept))  # timed on the services' clock
    phases = [e.message for e in events if isinstance(e, Phase)]
    assert phases == [
        f"import session {result.session_id} created",
        "added to import session as file1",
        "upload begun",
        "upload completed",
        f"import session {result.session_id} committed",
        "waiting for the model",
        f"model {result.model_id} ready",
    ]


async def test_several_files_make_one_session_and_one_model(tmp_path: Path) -> None:
    files = [
        sample(tmp_path, f"floor{i}.e57", size, seed=i)
        for i, size in enumerate((300 * KiB, 900 * KiB, 5 * KiB), 1)
    ]
    events: list[Event] = []
    async with sandbox() as (sb, mp), uploader(events) as up:
        result = await provider(sb).import_files(up, [p for p, _ in files], organization=ORG)
    assert_arrived(mp, result, [md5 for _, md5 in files])
    assert len(mp.sessions) == 1
    session = mp.session(result.session_id)
    assert list(session.files) == ["file1", "file2", "file3"]
    assert [o.client_id for o in session.objects] == ["e57-1", "e57-2", "e57-3"]
    assert [len(r.parts) for r in result.files] == [2, 4, 1]
    assert result.operations.count("addImportSession") == 1
    assert result.operations.count("AddE57Object") == 3
    assert result.operations.count("commitImportSession") == 1
    assert result.bytes == sum(p.stat().st_size for p, _ in files)


@pytest.mark.parametrize(
    ("plane", "size", "part_size", "sizes", "part_requests"),
    [
        # S3 defaults scaled down: 5 MiB -> 256 KiB minimum, the engine's preferred part size
        pytest.param({"min_part_size": PART}, 5 * PART + 1000, PART, [PART] * 5, 7, id="s3"),
        # a "100 MiB minimum" scaled down: the engine's smaller preference grows to the minimum
        pytest.param(
            {"min_part_size": 1 * MiB}, 2 * MiB + 512 * KiB, PART, [MiB, MiB], 4, id="big-min"
        ),
        # the whole file as one part: minSize == maxSize == file size; part 0 is asked once
        pytest.param({"single_part": True}, 900 * KiB, PART, [], 1, id="single"),
        # a file above maxSize cannot be asked for whole: part 0 is asked again at part size
        pytest.param(
            {"min_part_size": PART, "max_part_size": 2 * PART},
            4 * PART + 5000,
            3 * PART,
            [2 * PART, 2 * PART],
            6,  # whole (refused), half (refused), a quarter, then the three parts
            id="above-max",
        ),
        # the part URLs require a header that the client must send as given
        pytest.param(
            {"min_part_size": PART, "part_headers": (("x-amz-server-side-encryption", "AES256"),)},
            3 * PART,
            PART,
            [PART, PART],
            4,
            id="headers",
        ),
    ],
)
async def test_part_size_regimes(
    tmp_path: Path,
    plane: dict[str, Any],
    size: int,
    part_size: int,
    sizes: list[int],
    part_requests: int,
) -> None:
    path, md5 = sample(tmp_path, "scan.e57", size, seed=5)
    real = path.stat().st_size
    async with sandbox(**plane) as (sb, mp), uploader(part_size=part_size) as up:
        result = await provider(sb).import_files(up, [path], organization=ORG)
    assert_arrived(mp, result, [md5])
    (upload,) = result.files
    last = real - sum(sizes)
    assert [p.size for p in upload.parts] == [*sizes, last]
    assert result.operations.count("requestPartUpload") == part_requests
    assert sb.store.stats()["requests"] == len(upload.parts)


async def test_faults_on_storage_and_control_plane_are_retried(tmp_path: Path) -> None:
    files = [sample(tmp_path, f"f{i}.e57", 1200 * KiB, seed=10 + i) for i in range(2)]
    faults = FaultPlan(
        seed=3,
        rates={
            "500": 0.1,
            "503": 0.05,
            "throttle": 0.1,
            "reset": 0.1,
            "expired": 0.1,
            "bad_etag": 0.1,
        },
        retry_after=0.01,
    )
    events: list[Event] = []
    async with (
        sandbox(faults, internal_error_rate=0.15, seed=3) as (sb, mp),
        uploader(events, concurrency=3) as up,
    ):
        result = await provider(sb).import_files(up, [p for p, _ in files], organization=ORG)
    assert_arrived(mp, result, [md5 for _, md5 in files])
    retries = [e for e in events if isinstance(e, PartRetry)]
    assert retries and sum(r.retries for r in result.files) == len(retries)
    reasons = " ".join(r.reason for r in retries)
    assert "Request has expired" in reasons  # a fresh URL was asked for
    assert "ETag does not match" in reasons  # a wrong ETag was caught and the part re-sent
    assert mp.stats()["injected_faults"]  # error.internal on GraphQL, retried by the client
    assert len(result.operations) > len(mp.sessions) and len(mp.sessions) >= 1


async def test_lost_answers_are_reconciled_not_repeated(tmp_path: Path) -> None:
    """Each mutation takes effect but its answer is lost (error.internal after the effect); the
    server is strict about repeats. The client recognises the state it already caused."""
    path, md5 = sample(tmp_path, "scan.e57", 600 * KiB, seed=2)
    lost = ("addE57Object", "beginUpload", "completeUpload", "commitImportSession")
    async with (
        sandbox(fail_operations=lost, fail_after_effect=True, idempotent_retries=False) as (sb, mp),
        uploader() as up,
    ):
        result = await provider(sb).import_files(up, [path], organization=ORG)
    assert_arrived(mp, result, [md5])
    assert mp.stats()["injected_faults"] == dict.fromkeys(sorted(lost), 1)
    assert len(mp.session(result.session_id).files) == 1
    assert mp.errors["not.unique"] == 1 and mp.errors["request.invalid"] == 3


# ---- resume --------------------------------------------------------------------------------------


async def test_a_cancelled_import_resumes_the_same_session_sending_only_missing_parts(
    tmp_path: Path,
) -> None:
    path, md5 = sample(tmp_path, "big.e57", 12 * PART, seed=3)
    journal = tmp_path / "state" / "journal.jsonl"
    async with sandbox(FaultPlan(latency=0.01)) as (sb, mp):
        mport = provider(sb)
        done = 0
        with anyio.CancelScope() as scope:

            def stop_midway(event: Event) -> None:
                nonlocal done
                if isinstance(event, PartDone):
                    done += 1
                    if done == 4:
                        scope.cancel()

            async with Uploader(
                UploadConfig(part_size=PART, concurrency=3), on_event=stop_midway, journal=journal
            ) as up:
                await mport.import_files(up, [path], organization=ORG)
        assert scope.cancelled_caught
        await settle(sb)
        (session,) = mp.sessions.values()
        (file,) = session.files.values()
        assert file.upload_id is not None and file.status == "STARTED"
        held = {p.number for p in sb.store.list_parts(file.upload_id)}
        assert 4 <= len(held) < 12
        sb.store.reset_stats()
        calls_before = len(mp.call_log)

        async with uploader(journal=journal, concurrency=3) as up:
            result = await mport.import_files(up, [path], organization=ORG)
        assert result.session_id == session.id
        assert_arrived(mp, result, [md5])
        assert set(puts(sb)) == set(range(1, 13)) - held  # only the missing parts, once each
        assert all(n == 1 for n in puts(sb).values())
        second = mp.call_log[calls_before:]
        assert second[:2] == ["importSession", "requestPartUpload"]
        assert "importFilePartsUploadStatus" in second
        for call in ("addImportSession", "addE57Object", "beginUpload"):
            assert call not in second
        assert result.files[0].bytes_sent == (12 - len(held)) * PART

        # A third run finds everything done: no bytes, no mutations, the same model.
        sb.store.reset_stats()
        calls_before = len(mp.call_log)
        async with uploader(journal=journal) as up:
            again = await mport.import_files(up, [path], organization=ORG)
        assert (again.session_id, again.model_id) == (result.session_id, result.model_id)
        assert again.files[0].remote == result.files[0].remote  # typed, from the journal
        assert sb.store.stats()["requests"] == 0
        # the session resumed, then the file confirmed by the server: no mutation at all
        assert mp.call_log[calls_before:] == ["importSession", "importSession"]
        assert again.skipped is not None and again.skipped.reason == "already uploaded"

    text = journal.read_text()
    assert session.id in text
    assert "sandbox-token-secret" not in text and "X-Signature" not in text
    # no URL but the endpoint, which the keys name (``matterport_*_key``): no part URL
    assert mport.endpoint in text and "http://" not in text.replace(mport.endpoint, "")


@pytest.mark.parametrize("stop_at", ["upload completed", "committed"])
async def test_an_import_stopped_after_a_step_does_not_repeat_it(
    tmp_path: Path, stop_at: str
) -> None:
    path, md5 = sample(tmp_path, "scan.e57", 600 * KiB, seed=4)
    journal = tmp_path / "journal.jsonl"
    async with sandbox() as (sb, mp):
        mport = provider(sb)
        with anyio.CancelScope() as scope:

            def stop(event: Event) -> None:
                if isinstance(event, Phase) and event.message.endswith(stop_at):
                    scope.cancel()

            async with Uploader(UploadConfig(part_size=PART), on_event=stop, journal=journal) as up:
                await mport.import_files(up, [path], organization=ORG)
        assert scope.cancelled_caught
        (session,) = mp.sessions.values()
        assert session.files["file1"].status == "COMPLETED"
        assert session.committed == (stop_at == "committed")
        sb.store.reset_stats()
        calls_before = len(mp.call_log)
        async with uploader(journal=journal) as up:
            result = await mport.import_files(up, [path], organization=ORG)
        assert result.session_id == session.id
        assert_arrived(mp, result, [md5])
        second = mp.call_log[calls_before:]
        assert sb.store.stats()["requests"] == 0
        assert "completeUpload" not in second and "requestPartUpload" not in second
        assert second.count("commitImportSession") == (stop_at != "committed")


async def test_draining_stops_the_wait_for_the_model_and_a_rerun_picks_it_up(
    tmp_path: Path,
) -> None:
    path, md5 = sample(tmp_path, "scan.e57", 300 * KiB, seed=6)
    journal = tmp_path / "journal.jsonl"
    async with sandbox(model_delay=0.3) as (sb, mp):
        mport = provider(sb)
        running: list[Uploader] = []

        def drain(event: Event) -> None:
            if isinstance(event, Phase) and event.message == "waiting for the model":
                running[0].drain()

        async with Uploader(UploadConfig(part_size=PART), on_event=drain, journal=journal) as up:
            running.append(up)
            with pytest.raises(InterruptedUpload, match="stopped while waiting for the model"):
                await mport.import_files(up, [path], organization=ORG)
        async with uploader(journal=journal) as up:
            result = await mport.import_files(up, [path], organization=ORG)
        assert_arrived(mp, result, [md5])
        assert mp.calls["commitImportSession"] == 1


async def test_a_changed_file_starts_a_new_session_or_is_refused(tmp_path: Path) -> None:
    path, _ = sample(tmp_path, "scan.e57", 300 * KiB, seed=1)
    journal = tmp_path / "journal.jsonl"
    async with sandbox() as (sb, mp):
        mport = provider(sb)
        async with uploader(journal=journal) as up:
            first = await mport.import_files(up, [path], organization=ORG)
        md5 = write_sample_e57(path, 300 * KiB, seed=2)  # same size, new bytes and mtime
        refusing = Uploader(UploadConfig(part_size=PART), journal=journal, on_change="refuse")
        async with refusing as up:
            with pytest.raises(SourceChangedError, match=r"scan\.e57 changed since import session"):
                await mport.import_files(up, [path], organization=ORG)
        async with uploader(journal=journal) as up:
            second = await mport.import_files(up, [path], organization=ORG)
        assert second.session_id != first.session_id
        assert_arrived(mp, second, [md5])


async def test_a_file_edited_between_runs_is_reported_once_as_changed(tmp_path: Path) -> None:
    edited, _ = sample(tmp_path, "floor1.e57", 300 * KiB, seed=1)
    kept, kept_md5 = sample(tmp_path, "floor2.e57", 300 * KiB, seed=2)
    journal = tmp_path / "journal.jsonl"
    async with sandbox() as (sb, mp):
        mport = provider(sb)
        events: list[Event] = []
        async with uploader(events, journal=journal) as up:
            first = await mport.import_files(up, [edited, kept], organization=ORG)
        assert not [e for e in events if isinstance(e, Phase) and e.message == CHANGED]
        edited_md5 = write_sample_e57(edited, 300 * KiB, seed=3)  # same size, new bytes and mtime
        events.clear()
        async with uploader(events, journal=journal) as up:
            second = await mport.import_files(up, [edited, kept], organization=ORG)
        assert second.session_id != first.session_id
        assert_arrived(mp, second, [edited_md5, kept_md5])
        changed = [e.path for e in events if isinstance(e, Phase) and e.message == CHANGED]
        assert changed == [edited.absolute()]  # once, and only for the file that changed
        events.clear()
        async with uploader(events, journal=journal) as up:
            third = await mport.import_files(up, [edited, kept], organization=ORG)
        assert (third.session_id, third.model_id) == (second.session_id, second.model_id)
        assert not [e for e in events if isinstance(e, Phase) and e.message == CHANGED]
    # each file begun once per session (the engine's own begin found it begun); the edited one
    # once more under the first session: that begin is what reported the change
    a, b, old, new = (
        str(edited.absolute()),
        str(kept.absolute()),
        first.session_id,
        second.session_id,
    )
    assert begins(journal) == {(old, a): 2, (old, b): 1, (new, a): 1, (new, b): 1}


# ---- errors ----------------------------------------------------------------------------------


async def test_files_are_checked_before_any_request(tmp_path: Path) -> None:
    good, _ = sample(tmp_path, "good.e57", 300 * KiB, seed=1)
    bad = tmp_path / "model.e57"
    bad.write_bytes(b"ISO-10303-21;\nHEADER;\n" + b"x" * 5000)
    async with sandbox() as (sb, mp), uploader() as up:
        with pytest.raises(FormatError) as err:
            await provider(sb).import_files(up, [good, bad], organization=ORG)
        assert str(err.value) == f"{bad}: not an E57 file (header does not read ASTM-E57)"
        with pytest.raises(SourceError, match=r"missing\.e57: no such file"):
            await provider(sb).import_files(up, [good, tmp_path / "missing.e57"], organization=ORG)
        assert mp.http_requests == 0 and sb.store.stats()["requests"] == 0


async def test_a_file_the_platform_cannot_ingest_times_out_naming_the_session(
    tmp_path: Path,
) -> None:
    # The header reads ASTM-E57, so the client sends it; the platform's own check fails it and
    # no model ever appears (the Import API has no field for the reason).
    path, _ = sample(tmp_path, "torn.e57", 300 * KiB, seed=1)
    with path.open("r+b") as f:
        f.seek(100 * KiB)
        f.write(b"\xff" * 64)  # breaks a page CRC
    clock = FakeClock()
    async with sandbox() as (sb, mp), uploader(clock=clock) as up:
        with pytest.raises(ProcessingError) as err:
            await provider(sb, model_deadline=0.5).import_files(up, [path], organization=ORG)
        (session,) = mp.sessions.values()
        with anyio.fail_after(5):  # the deadline is virtual time: let the plane's check finish
            await mp.wait_processed(session.id)
    assert str(err.value).startswith(f"importSession: no model for import session {session.id}")
    assert session.failure is not None and "not a valid E57" in session.failure
    # polled every 0.01 s, growing by half up to 0.08 s, never past the deadline of 0.5 s
    growing = [0.01 * 1.5**k for k in range(6)]
    assert clock.slept[:6] == pytest.approx(growing)
    assert clock.slept[6:-1] == pytest.approx([0.08] * (len(clock.slept) - 7))
    assert sum(clock.slept) == pytest.approx(0.5) and 0 < clock.slept[-1] <= 0.08


async def test_wrong_credentials(tmp_path: Path) -> None:
    path, _ = sample(tmp_path, "scan.e57", 300 * KiB, seed=1)
    async with sandbox() as (sb, mp), uploader() as up:
        wrong = MatterportCredentials("sandbox-token-id", "not-the-secret")
        with pytest.raises(AuthenticationError) as err:
            await provider(sb, wrong).import_files(up, [path], organization=ORG)
    message = str(err.value)
    assert message.startswith(
        "addImportSession: Matterport refused the credentials: check MATTERPORT_TOKEN_ID/SECRET"
    )
    assert err.value.code == "request.unauthenticated"
    assert "\n" not in message and "not-the-secret" not in message
    assert mp.http_requests == 1  # failed fast: no retries


async def test_an_organization_the_token_may_not_use(tmp_path: Path) -> None:
    path, _ = sample(tmp_path, "scan.e57", 300 * KiB, seed=1)
    async with sandbox() as (sb, mp), uploader() as up:
        with pytest.raises(PermissionDeniedError) as err:
            await provider(sb).import_files(up, [path], organization="someone-else")
    assert err.value.code == "request.unauthorized"
    assert str(err.value) == (
        "addImportSession: not allowed with this token: This token may not import into "
        "organization 'someone-else' (request.unauthorized)"
    )
    assert mp.http_requests == 1


async def test_quota_exceeded(tmp_path: Path) -> None:
    path, _ = sample(tmp_path, "scan.e57", 300 * KiB, seed=1)
    async with sandbox(quota=0) as (sb, mp), uploader() as up:
        with pytest.raises(QuotaExceededError) as err:
            await provider(sb).import_files(up, [path], organization=ORG)
    assert err.value.code == "quota.exceeded"
    assert str(err.value).startswith("addImportSession: the account's quota is exceeded: ")
    assert mp.http_requests == 1


async def test_internal_errors_that_outlive_the_retries(tmp_path: Path) -> None:
    path, _ = sample(tmp_path, "scan.e57", 300 * KiB, seed=1)
    async with (
        sandbox(fail_operations=("addImportSession",) * 3) as (sb, mp),
        uploader(max_attempts=3) as up,
    ):
        with pytest.raises(ServiceError) as err:
            await provider(sb).import_files(up, [path], organization=ORG)
    assert err.value.code == "error.internal"
    assert str(err.value) == (
        "addImportSession: Internal server error in addImportSession (injected) "
        "(gave up after 3 attempts)"
    )
    assert mp.calls["addImportSession"] == 3


async def test_server_side_codes_map_to_errors(tmp_path: Path) -> None:
    """not.found, not.unique and request.invalid (state violations, schema violations), each
    from the sandbox through the provider's classify."""
    async with sandbox() as (sb, _mp), uploader() as up:
        gql = provider(sb).graphql(up.services)
        with pytest.raises(NotFoundError) as nf:
            await gql.execute(BEGIN_UPLOAD, {"importSessionId": "nope", "importFileId": "file1"})
        assert str(nf.value) == "beginUpload: No import session with id 'nope' (not.found)"
        data = await gql.execute(ADD_IMPORT_SESSION, {"organizationId": ORG, "processType": "E57"})
        ids = {"importSessionId": data["addImportSession"]["id"], "importFileId": "file1"}
        e57 = {"id": "e57", "file": {"clientId": "file1", "name": "a.e57", "type": "x", "size": 9}}
        await gql.execute(ADD_E57_OBJECT, {"importSessionId": ids["importSessionId"], "e57": e57})
        with pytest.raises(ConflictError) as nu:
            await gql.execute(
                ADD_E57_OBJECT, {"importSessionId": ids["importSessionId"], "e57": e57}
            )
        assert nu.value.code == "not.unique"
        assert str(nu.value).startswith("AddE57Object: An E57 object with id 'e57' is already")
        with pytest.raises(InvalidRequestError) as state:
            await gql.execute(REQUEST_PART_UPLOAD, {**ids, "part": 0, "size": 9})
        assert str(state.value) == (
            "requestPartUpload: file 'file1' is PENDING: call beginUpload before "
            "requestPartUpload (request.invalid)"
        )
        with pytest.raises(InvalidRequestError) as schema:
            await gql.execute("query importSession { importSession { nope } }")
        assert schema.value.code == "request.invalid"
        assert str(schema.value).startswith("importSession: ")


@pytest.mark.parametrize(
    ("status", "code", "kind", "text"),
    [
        (200, "request.unauthenticated", AuthenticationError, "Matterport refused the credentials"),
        (401, "", AuthenticationError, "check MATTERPORT_TOKEN_ID/SECRET"),
        (403, "", AuthenticationError, "check MATTERPORT_TOKEN_ID/SECRET"),
        (200, "request.unauthorized", PermissionDeniedError, "not allowed with this token: m"),
        (200, "request.invalid", InvalidRequestError, "op: m (request.invalid)"),
        (200, "not.found", NotFoundError, "op: m (not.found)"),
        (200, "not.unique", ConflictError, "op: m (not.unique)"),
        (200, "quota.exceeded", QuotaExceededError, "quota is exceeded: m (quota.exceeded)"),
        (400, "", InvalidRequestError, "op: m"),
    ],
)
def test_classify(status: int, code: str, kind: type[Exception], text: str) -> None:
    error = classify(GraphQLFailure("op", status, code, "m", None))
    assert type(error) is kind
    assert text in str(error) and str(error).startswith("op: ")


def test_classify_retries_internal_errors() -> None:
    assert classify(GraphQLFailure("op", 200, "error.internal", "boom", None)) is None


def test_credentials_from_the_environment_and_never_shown() -> None:
    creds = MatterportCredentials.from_env(
        {"MATTERPORT_TOKEN_ID": "id", "MATTERPORT_TOKEN_SECRET": "s3cret"}
    )
    assert creds.authorization == "Basic aWQ6czNjcmV0"
    assert "s3cret" not in repr(creds) and "s3cret" not in str(creds)
    assert "s3cret" not in repr(Matterport(creds))
    with pytest.raises(AuthenticationError) as err:
        MatterportCredentials.from_env({"MATTERPORT_TOKEN_ID": "id"})
    assert "set MATTERPORT_TOKEN_ID and MATTERPORT_TOKEN_SECRET" in str(err.value)
    assert "MATTERPORT_TOKEN_SECRET unset" in str(err.value)


# ---- as the guide documents it -------------------------------------------------------------------


@asynccontextmanager
async def wire() -> AsyncIterator[tuple[aiohttp.ClientSession, list[dict[str, Any]]]]:
    """A client session that keeps the JSON body of every GraphQL request it sends, as sent."""
    sent: list[dict[str, Any]] = []

    async def on_chunk(
        _: aiohttp.ClientSession, __: Any, params: aiohttp.TraceRequestChunkSentParams
    ) -> None:
        if params.method == "POST":
            sent.append(orjson.loads(params.chunk))

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(on_chunk)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield session, sent


def sent_ops(sent: list[dict[str, Any]], op: str) -> list[dict[str, Any]]:
    """The variables of every request whose document is ``op``."""
    return [r.get("variables") or {} for r in sent if f"{op}(" in str(r.get("query"))]


async def test_complete_upload_sends_each_etag_bare_as_the_guides_example(tmp_path: Path) -> None:
    path, md5 = sample(tmp_path, "scan.e57", 700 * KiB, seed=21)  # three parts
    async with sandbox() as (sb, mp), wire() as (session, sent):
        up = Uploader(UploadConfig(part_size=PART), session=session, clock=FakeClock())
        async with up:
            result = await provider(sb).import_files(up, [path], organization=ORG)
    assert_arrived(mp, result, [md5])
    stored = [p.etag for p in result.files[0].parts]
    assert len(stored) == 3 and all(e.startswith('"') and e.endswith('"') for e in stored)
    (completed,) = sent_ops(sent, "completeUpload")
    values = [h["value"] for part in completed["completedParts"] for h in part["headers"]]
    assert [h["key"] for part in completed["completedParts"] for h in part["headers"]] == [
        "ETag"
    ] * 3
    assert values == [e.strip('"') for e in stored]  # in part order, without the quotes


def test_no_part_is_planned_above_5_gib_whatever_max_size_says() -> None:
    GiB = 1024**3
    limits = read_limits({"minSize": 5 * MiB, "maxSize": 50 * GiB}, 12 * GiB)
    assert limits.max_size == MAX_PUT_SIZE and not limits.single
    plan = plan_parts(12 * GiB, part_size=20 * GiB, limits=limits)
    assert max(p.size for p in plan) <= MAX_PUT_SIZE and sum(p.size for p in plan) == 12 * GiB
    # one part, as the server asks, while it fits in one PUT
    assert read_limits({"minSize": 3 * GiB, "maxSize": 3 * GiB}, 3 * GiB).single
    with pytest.raises(TooLargeError, match="above the 5368709120 bytes one PUT"):
        read_limits({"minSize": 6 * GiB, "maxSize": 6 * GiB}, 6 * GiB)


async def test_list_import_sessions_is_never_asked_without_its_model_id(tmp_path: Path) -> None:
    """A commit whose answer is lost, on a server strict about repeats: the client finds out
    that it took without listing sessions by a null modelId (the guide marks it required)."""
    path, md5 = sample(tmp_path, "scan.e57", 300 * KiB, seed=22)
    strict = {"idempotent_retries": False, "fail_after_effect": True}
    async with (
        sandbox(fail_operations=("commitImportSession",), **strict) as (sb, mp),
        wire() as (session, sent),
    ):
        up = Uploader(UploadConfig(part_size=PART), session=session, clock=FakeClock())
        async with up:
            result = await provider(sb).import_files(up, [path], organization=ORG)
    assert_arrived(mp, result, [md5])
    assert mp.stats()["injected_faults"] == {"commitImportSession": 1}
    assert mp.errors["request.invalid"] == 1  # the repeated commit, refused: reconciled
    assert len(sent_ops(sent, "commitImportSession")) == 2
    assert all(v.get("modelId") for v in sent_ops(sent, "listImportSessions"))
    assert mp.calls["listImportSessions"] == 0


@pytest.mark.parametrize("base", [0, 1], ids=["zero-based", "one-based"])
def test_held_parts_count_only_with_their_journaled_etag(base: int) -> None:
    plan = [PartSpec(n, (n - 1) * 10, 10) for n in (1, 2, 3, 4)]
    journal = {n: PartResult(n, f'"{n:032x}"', 10) for n in (1, 2, 3)}  # 4 never journaled
    held = {
        0 + base: (f"{1:032x}", 10),  # as journaled (quotes aside)
        1 + base: ("f" * 32, 10),  # another ETag than the journal's: re-sent
        2 + base: (f"{3:032x}", 10),
        3 + base: (f"{4:032x}", 10),  # the journal does not know it: re-sent
    }
    got = match_held(plan, held, journal)
    assert got == {1: journal[1], 3: journal[3]}  # kept as the storage returned them
    assert match_held(plan, {}, journal) == {}


async def test_a_held_part_whose_etag_is_not_the_journaled_one_is_sent_again(
    tmp_path: Path,
) -> None:
    path, md5 = sample(tmp_path, "big.e57", 8 * PART, seed=23)
    journal = tmp_path / "journal.jsonl"
    async with sandbox(FaultPlan(latency=0.01)) as (sb, mp):
        mport = provider(sb)
        with anyio.CancelScope() as scope:
            done: list[int] = []

            def stop_midway(event: Event) -> None:
                if isinstance(event, PartDone):
                    done.append(event.part)
                    if len(done) == 4:
                        scope.cancel()

            async with Uploader(
                UploadConfig(part_size=PART, concurrency=2), on_event=stop_midway, journal=journal
            ) as up:
                await mport.import_files(up, [path], organization=ORG)
        await settle(sb)
        (session,) = mp.sessions.values()
        upload_id = session.files["file1"].upload_id
        assert upload_id is not None
        held = {p.number for p in sb.store.list_parts(upload_id)}
        wrong = min(held & set(done))
        key = matterport_file_key(mport.endpoint, session.id, FileInfo.of(path))
        j = Journal(journal)  # the journal now disagrees with the server on one part
        try:
            j.for_key(key).part_done(PartResult(wrong, '"' + "0" * 32 + '"', PART))
        finally:
            j.close()
        sb.store.reset_stats()
        async with uploader(journal=journal) as up:
            result = await mport.import_files(up, [path], organization=ORG)
    assert_arrived(mp, result, [md5])
    assert set(puts(sb)) == (set(range(1, 9)) - held) | {wrong}


async def test_a_graceful_stop_ends_the_wait_for_the_model_at_once(tmp_path: Path) -> None:
    """Real time: the first poll found no model and the next is 30 s away; a drain ends the
    wait at once (the rerun picks the model up, as above)."""
    path, _ = sample(tmp_path, "scan.e57", 300 * KiB, seed=24)
    async with sandbox(model_delay=60.0) as (sb, _mp):
        client = Matterport(CREDENTIALS, endpoint=f"{sb.url}/api/import/graph", poll_interval=30.0)
        waiting = anyio.Event()
        stopped: list[float] = []

        def hook(event: Event) -> None:
            if isinstance(event, Phase) and event.message == "waiting for the model":
                waiting.set()

        async with Uploader(UploadConfig(part_size=PART), on_event=hook) as up:

            async def stop_soon() -> None:
                await waiting.wait()
                await anyio.sleep(0.3)  # well into the 30 s pause before the next poll
                stopped.append(anyio.current_time())
                up.drain()

            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_soon)
                with anyio.fail_after(10), pytest.raises(InterruptedUpload, match="waiting for"):
                    await client.import_files(up, [path], organization=ORG)
            assert anyio.current_time() - stopped[0] < 1.0
