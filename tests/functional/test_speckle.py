"""The Speckle provider against the in-process sandbox: real GraphQL and real PUTs on loopback.

Every successful upload is checked against the sandbox: the MD5 of the blob it registered equals
the source's, exactly one ingestion and one version exist, and ``startFileIngestion`` ran once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from engine import (
    AuthenticationError,
    Event,
    FormatError,
    InvalidRequestError,
    NotFoundError,
    PartDone,
    PartRetry,
    PermissionDeniedError,
    Phase,
    ProcessingError,
    TooLargeError,
    UploadConfig,
    Uploader,
)
from engine.clock import Clock, FakeClock, SystemClock
from engine.journal import (
    FileState,
    IngestionRequested,
    IngestionStarted,
    Journal,
    Mark,
    SpeckleApiChosen,
    UploadStarted,
    UploadVoided,
)
from engine.models import FileInfo, PartResult
from engine.providers.speckle import (
    Ingestion,
    Speckle,
    SpeckleCredentials,
    SpeckleFileTarget,
    SpeckleResult,
    SpeckleVersion,
)
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.faults import FaultPlan
from engine.sandbox.ifc import write_sample_ifc
from engine.sandbox.server import Sandbox, SandboxConfig
from engine.sandbox.speckle import SpecklePlane, SpeckleSandboxConfig

pytestmark = pytest.mark.anyio

TOKEN = "sandbox-token"
PROJECT = "sandbox-project"
SIZE = 200_000
#: The GraphQL operations of one upload into a new model (ingestion done at the first poll); the
#: first file of an uploader asks what the server offers (its API and size limit) first.
NEW_MODEL_OPERATIONS = [
    "SpeckleServer",
    "ProjectModelByName",
    "CreateModel",
    "GenerateFileUploadUrl",
    "StartFileIngestion",
    "Ingestion",
]
CONFIG = UploadConfig(backoff_base=0.0, backoff_cap=0.0, chunk_size=64 * 1024)


@asynccontextmanager
async def sandbox(
    faults: FaultPlan | None = None, *, discard: bool = False, **speckle: Any
) -> AsyncIterator[Sandbox]:
    speckle.setdefault("step_delay", 0.0)
    # The public server's rate limit (on by default) is pinned in test_speckle_ratelimit.py;
    # here the fake clock's instant backstop polls would only race it.
    speckle.setdefault("rate_limit_per_second", None)
    config = SandboxConfig(
        speckle=SpeckleSandboxConfig(**speckle), faults=faults or FaultPlan(), discard=discard
    )
    async with Sandbox(config) as sb:
        yield sb


def plane(sb: Sandbox) -> SpecklePlane:
    return next(p for p in sb.planes if isinstance(p, SpecklePlane))


def puts(sb: Sandbox) -> int:
    """PUTs the blob store accepted for checking (faulted ones included)."""
    return sum(sum(parts.values()) for parts in sb.store.stats()["puts_by_part"].values())


def client(sb: Sandbox, token: str = TOKEN, **kw: Any) -> Speckle:
    kw.setdefault("poll_interval", 0.01)
    return Speckle(SpeckleCredentials(token), server=sb.url, **kw)


class SteadyFakeClock(FakeClock):
    """Virtual time whose waits also let a little real time pass: with one attempt per call
    and every 5th request throttled, status polls must not spin faster than the live
    update (which comes in real time) can arrive."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        await anyio.sleep(0.05)


def fake_clock() -> FakeClock:
    """Virtual time that starts at the real date: the sandbox stamps ``createdAt`` with the wall
    clock, and the recovery compares it with the journaled ``requested_at``."""
    return FakeClock(start=datetime.now(UTC))


def journal_state(journal: Path, target: SpeckleFileTarget, path: Path) -> FileState:
    """What the journal file holds for ``path`` under ``target``'s key."""
    j = Journal(journal)
    try:
        return j.for_key(target.journal_key(FileInfo.of(path))).state
    finally:
        j.close()


def ifc(tmp_path: Path, name: str = "scan.ifc", size: int = SIZE) -> tuple[Path, str]:
    path = tmp_path / name
    return path, write_sample_ifc(path, size, seed=7)


async def upload(
    sb: Sandbox,
    path: Path,
    *,
    target: SpeckleFileTarget | None = None,
    events: list[Event] | None = None,
    journal: Path | None = None,
    on_event: Callable[[Event], None] | None = None,
    clock: Clock | None = None,
    config: UploadConfig = CONFIG,
    **kw: Any,
) -> tuple[SpeckleResult, SpeckleFileTarget]:
    """One upload; waits run on ``clock`` (default: virtual time, ``fake_clock()``); the
    sandbox's ingestions advance on the wall clock, so tests that wait on them pass a
    ``SystemClock``."""
    target = target or client(sb).target(project_id=kw.pop("project_id", PROJECT), **kw)
    sink = events if events is not None else []

    def hook(event: Event) -> None:
        sink.append(event)
        if on_event is not None:
            on_event(event)

    async with Uploader(config, on_event=hook, journal=journal, clock=clock or fake_clock()) as up:
        result = await up.upload(path, target)
    return SpeckleResult.from_upload(result), target


def journal_a_start(
    journal: Path, target: SpeckleFileTarget, path: Path, model_id: str, file_id: str, **kw: str
) -> None:
    """An earlier run's journal: the blob stored, the start requested and not answered (or,
    with ``ingestion_id=``, answered with that id)."""
    j = Journal(journal)
    fj = j.for_key(target.journal_key(FileInfo.of(path)))
    fj.begin(FileInfo.of(path))
    fj.record(UploadStarted(project_id=PROJECT, model_id=model_id, file_id=file_id))
    fj.part_done(PartResult(1, '"etag"', SIZE))
    fj.record(SpeckleApiChosen(api="v3"))
    fj.record(IngestionRequested(etag='"etag"', requested_at="2026-01-01T00:00:00+00:00"))
    fj.mark(Mark.INGESTION_REQUESTED)
    if "ingestion_id" in kw:
        fj.record(IngestionStarted(ingestion_id=kw["ingestion_id"]))
    j.close()


async def raw_graphql(sb: Sandbox, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """One GraphQL request of someone else (the web app, another tool) with the token."""
    async with aiohttp.ClientSession() as http:
        body = {"query": query, "variables": variables}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(f"{sb.url}/graphql", json=body, headers=headers) as r:
            answer: dict[str, Any] = await r.json()
            return answer


class BeforeWaiting:
    """The clock's waits and the calls up to the first ingestion status: what follows depends
    on how soon the sandbox decides the ingestion (its content check runs in a thread)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sleeps: int | None = None

    def __call__(self, event: Event) -> None:
        status = isinstance(event, Phase) and event.message.startswith("ingestion ")
        if self.sleeps is None and status:
            self.sleeps = len(self.clock.slept)

    @property
    def slept(self) -> list[float]:
        return self.clock.slept[: self.sleeps]

    @staticmethod
    def calls(target: SpeckleFileTarget) -> list[str]:
        """The calls up to the first status poll; every later one is a poll."""
        first = target.calls.index("Ingestion") + 1
        assert set(target.calls[first:]) <= {"Ingestion"}
        return target.calls[:first]


def assert_ingested_once(sb: Sandbox, result: SpeckleResult, source_md5: str) -> None:
    p = plane(sb)
    assert p.ingested_md5[result.file_id] == source_md5
    assert p.calls["startFileIngestion"] == 1
    assert list(p.ingestions) == [result.ingestion_id]
    assert list(p.versions) == [result.version_id]
    assert p.versions[result.version_id].model_id == result.model_id


# ---- the flow ------------------------------------------------------------------------------------


async def test_new_model_operations_and_journal(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox(additional_header=("x-amz-meta-origin", "upload-engine")) as sb:
        # The wall clock: the throughput below is bytes over real seconds.
        result, target = await upload(sb, path, journal=journal, clock=SystemClock())
        assert target.calls == NEW_MODEL_OPERATIONS
        assert_ingested_once(sb, result, digest)
        model = plane(sb).model_by_name(PROJECT, "scan")  # the file's stem
        assert model is not None and model.id == result.model_id
        assert puts(sb) == 1
        assert (result.project_id, result.upload.size) == (PROJECT, SIZE)
        assert result.throughput > 0
    text = journal.read_text()
    assert "X-Signature" not in text and "/blob/" not in text and TOKEN not in text
    assert result.file_id in text and result.ingestion_id in text
    st = journal_state(journal, target, path)
    assert st.get(UploadStarted) == UploadStarted(
        project_id=PROJECT, model_id=result.model_id, file_id=result.file_id
    )
    requested = st.get(IngestionRequested)
    assert requested is not None and requested.etag == result.upload.parts[0].etag
    assert datetime.fromisoformat(requested.requested_at).tzinfo is not None
    assert st.get(IngestionStarted) == IngestionStarted(ingestion_id=result.ingestion_id)
    assert st.get(SpeckleApiChosen) == SpeckleApiChosen(api="v3")  # asked before the start
    assert st.marks == {Mark.INGESTION_REQUESTED}
    assert result.upload.remote == SpeckleVersion(
        project_id=PROJECT,
        model_id=result.model_id,
        file_id=result.file_id,
        ingestion_id=result.ingestion_id,
        version_id=result.version_id,
    )
    record = result.upload.remote.to_record()
    assert st.done is not None and {k: st.done[k] for k in record} == record


async def test_progress_is_reported_as_phases(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    events: list[Event] = []
    async with sandbox(step_delay=0.1, processing_steps=3) as sb:
        result, _ = await upload(
            sb, path, events=events, model_name="progress", clock=SystemClock()
        )
        assert_ingested_once(sb, result, digest)
    # Wall-clock driven (queued 0.1 s, then 3 processing steps of 0.1 s): which statuses a poll
    # sees depends on timing, so only what holds under any load is asserted.
    messages = [e.message for e in events if isinstance(e, Phase)]
    statuses = [m for m in messages if m.startswith("ingestion ")]
    assert statuses[-1] == "ingestion success" and len(statuses) >= 2
    assert all(
        m.startswith(("ingestion queued: ", "ingestion processing: ")) for m in statuses[:-1]
    )
    progress = [e.progress for e in events if isinstance(e, Phase) and e.progress is not None]
    assert progress == sorted(progress) and all(0 < p < 1 for p in progress)
    assert len(messages) == len(set(messages))  # one event per change, not one per poll


@pytest.mark.parametrize(
    ("name", "found_by"),
    [
        ("main", ["ProjectModelByName"]),
        # modelByName matches the stored name exactly (its dataloader keys rows by name:
        # core/graph/dataloaders/index.ts), a create of "MAIN" is refused as taken, and the
        # case-insensitive search finds "main".
        ("MAIN", ["ProjectModelByName", "CreateModel", "ProjectModelByName", "ProjectModelSearch"]),
    ],
)
async def test_existing_model_by_name(tmp_path: Path, name: str, found_by: list[str]) -> None:
    path, digest = ifc(tmp_path)
    async with sandbox() as sb:
        main = plane(sb).model_by_name(PROJECT, "main")
        assert main is not None
        result, target = await upload(sb, path, model_name=name)
        assert result.model_id == main.id
        # then the status: live over the socket, with polls as the backstop (how many depends
        # on when the socket's updates arrive, in real time, against the fake clock's polls)
        head = ["SpeckleServer", *found_by, "GenerateFileUploadUrl", "StartFileIngestion"]
        assert target.calls[: len(head)] == head
        assert set(target.calls[len(head) :]) == {"Ingestion"}
        assert len(plane(sb).models) == 1  # no second model
        assert_ingested_once(sb, result, digest)


async def test_existing_model_by_id(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    async with sandbox(initial_models=("main", "site/scans")) as sb:
        model = plane(sb).model_by_name(PROJECT, "site/scans")
        assert model is not None
        result, target = await upload(sb, path, model_id=model.id)
        assert result.model_id == model.id
        assert target.calls[:2] == ["SpeckleServer", "ProjectModel"]
        assert "CreateModel" not in target.calls
        assert_ingested_once(sb, result, digest)


async def test_e57_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "cloud.e57"
    digest = write_sample_e57(path, 256 * 1024, seed=3)
    async with sandbox() as sb:
        result, _ = await upload(sb, path)
        assert_ingested_once(sb, result, digest)


async def test_upload_via_speckle_upload(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    async with sandbox() as sb:
        async with Uploader(CONFIG) as up:
            result = await client(sb).upload(up, path, project_id=PROJECT, model_name="api")
        assert_ingested_once(sb, result, digest)
        assert result.seconds >= result.upload.seconds > 0


# ---- the data path -------------------------------------------------------------------------------


async def test_put_faults_are_retried(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    faults = FaultPlan(rates={"503": 0.5, "reset": 0.5}, max_faulty_attempts=2)
    events: list[Event] = []
    clock = fake_clock()
    before = BeforeWaiting(clock)
    async with sandbox(faults=faults) as sb:
        result, target = await upload(sb, path, events=events, clock=clock, on_event=before)
        assert_ingested_once(sb, result, digest)
        assert puts(sb) == 3
        assert target.calls.count("GenerateFileUploadUrl") == 1  # same URL for every attempt
    retries = [e for e in events if isinstance(e, PartRetry)]
    assert [r.attempt for r in retries] == [1, 2]
    assert result.upload.retries == 2
    assert before.slept == [r.delay for r in retries]  # every wait went through the clock


async def test_expired_url_gets_a_fresh_one(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    async with sandbox(faults=FaultPlan(rates={"expired": 1.0}, max_faulty_attempts=1)) as sb:

        def heal(event: Event) -> None:
            if isinstance(event, PartRetry):
                sb.store.faults = FaultPlan()

        events: list[Event] = []
        result, target = await upload(sb, path, events=events, on_event=heal)
        assert [r.reason for r in events if isinstance(r, PartRetry)] == [
            "HTTP 403 AccessDenied: Request has expired"
        ]
        assert target.calls.count("GenerateFileUploadUrl") == 2
        first, second = plane(sb).blobs  # the first fileId is abandoned, the second ingested
        assert result.file_id == second != first
        assert_ingested_once(sb, result, digest)


async def test_additional_header_is_required_and_sent(tmp_path: Path) -> None:
    path, _ = ifc(tmp_path)
    async with sandbox(additional_header=("x-ms-blob-type", "BlockBlob")) as sb:
        target = client(sb).target(project_id=PROJECT)
        async with Uploader(CONFIG) as up:
            info = await up.upload(path, target)
        assert SpeckleResult.from_upload(info).version_id
        assert sb.store.stats()["errors"] == {}  # no SignatureDoesNotMatch: the header went out


# ---- GraphQL throttling and the completion rule --------------------------------------------------


@pytest.mark.parametrize("every", [2, 5])
async def test_rate_limits_are_survived(tmp_path: Path, every: int) -> None:
    path, digest = ifc(tmp_path)
    clock = fake_clock()
    before = BeforeWaiting(clock)
    async with sandbox(rate_limit_every=every, retry_after=0.01) as sb:
        result, target = await upload(sb, path, clock=clock, on_event=before)
        assert_ingested_once(sb, result, digest)
        limited = plane(sb).stats()["rate_limited"]
        assert limited >= 1
        assert before.slept == [0.01] * len(before.slept) and len(before.slept) >= 1
        if every == 5:
            # The 5th request (startFileIngestion) was throttled: a 429 is refused before the
            # server runs anything, so it is simply sent again, and registered exactly once.
            assert len(before.slept) == limited == 1  # one wait per 429, as long as it asked
            assert BeforeWaiting.calls(target) == [
                "SpeckleServer",
                "ProjectModelByName",
                "CreateModel",
                "GenerateFileUploadUrl",
                "StartFileIngestion",
                "StartFileIngestion",
                "Ingestion",
            ]


async def test_crash_between_put_and_completion_resumes_without_put(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox() as sb:
        with anyio.CancelScope() as scope:

            def crash(event: Event) -> None:
                if isinstance(event, PartDone):
                    scope.cancel()

            await upload(sb, path, journal=journal, on_event=crash)
        assert scope.cancelled_caught
        assert puts(sb) == 1
        assert plane(sb).calls["startFileIngestion"] == 0

        result, target = await upload(sb, path, journal=journal)
        assert puts(sb) == 1  # nothing sent again
        head = ["SpeckleServer", "ProjectModelByName", "StartFileIngestion"]
        assert target.calls[: len(head)] == head
        assert set(target.calls[len(head) :]) == {"Ingestion"}  # live status, polls as backstop
        assert result.upload.bytes_sent == 0
        assert_ingested_once(sb, result, digest)

        # A finished file is not uploaded or ingested again: the server confirms its version.
        again, target = await upload(sb, path, journal=journal)
        assert target.calls == ["ProjectVersion"]
        assert again.upload.remote == result.upload.remote  # rebuilt typed from the journal
        assert (again.version_id, again.ingestion_id) == (result.version_id, result.ingestion_id)
        assert plane(sb).calls["startFileIngestion"] == 1 and puts(sb) == 1


async def test_crash_while_polling_never_starts_twice(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox(step_delay=0.2, processing_steps=1) as sb:
        with anyio.CancelScope() as scope:

            def crash(event: Event) -> None:  # at the first status seen (queued)
                if isinstance(event, Phase) and event.message.startswith("ingestion "):
                    scope.cancel()

            await upload(sb, path, journal=journal, on_event=crash, clock=SystemClock())
        assert scope.cancelled_caught
        assert plane(sb).calls["startFileIngestion"] == 1

        result, target = await upload(sb, path, journal=journal, clock=SystemClock())
        assert set(target.calls) <= {"SpeckleServer", "Ingestion"}  # waited on, not started
        assert puts(sb) == 1
        assert_ingested_once(sb, result, digest)


class _StartAnswerLost(Ingestion):
    """The start (startFileIngestion, startFileImport, the REST POST) reaches the server,
    then the process dies before it hears back."""

    async def send_start(self, etag: str) -> str:
        await self.flow.send(etag)
        raise KeyboardInterrupt


class AnswerLost(SpeckleFileTarget):
    """A target whose start's answer is lost (see ``_StartAnswerLost``)."""

    ingestion_type = _StartAnswerLost


async def test_lost_answer_is_found_not_duplicated(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox() as sb:
        lossy = AnswerLost(client(sb), project_id=PROJECT)
        with pytest.raises(KeyboardInterrupt):
            await upload(sb, path, journal=journal, target=lossy)
        assert plane(sb).calls["startFileIngestion"] == 1
        (ingestion_id,) = plane(sb).ingestions
        lost = journal_state(journal, lossy, path)
        assert Mark.INGESTION_REQUESTED in lost.marks and lost.get(IngestionStarted) is None

        clock = fake_clock()
        before = BeforeWaiting(clock)
        result, target = await upload(sb, path, journal=journal, clock=clock, on_event=before)
        assert result.ingestion_id == ingestion_id
        assert sum(before.slept) == 0  # nothing was unsure: no pause before sending again
        assert puts(sb) == 1
        # The history by blob is not a query the sandbox can answer (its ingestionHistory has
        # another shape, and the public server has none): not found that way, and not asked
        # again. Project.blob is not in the sandbox's schema either (the introspection says so),
        # so the start is sent once more, refused as already registered, and the model's latest
        # ingestion since the journaled request is ours.
        assert BeforeWaiting.calls(target) == [
            "SpeckleServer",
            "ModelIngestionHistory",
            "StartFileIngestion",
            "ModelLatestIngestion",
            "Ingestion",
        ]
        p = plane(sb)
        assert p.calls["startFileIngestion"] == 2
        assert len(p.ingestions) == len(p.versions) == 1
        assert p.ingested_md5[result.file_id] == digest


@pytest.mark.parametrize(("base", "least", "most"), [(0.0, 0.01, 0.01), (5.0, 0.01, 5.0)])
async def test_unknown_outcome_is_looked_up_then_sent_after_a_pause(
    tmp_path: Path, base: float, least: float, most: float
) -> None:
    path, digest = ifc(tmp_path)
    # One attempt per call: the 5th request (startFileIngestion) is throttled and given up on,
    # so its outcome is unknown to the client (the sandbox refused it before running it).
    config = dataclasses.replace(CONFIG, max_attempts=1, backoff_base=base, backoff_cap=base)
    clock = SteadyFakeClock(start=datetime.now(UTC))
    before = BeforeWaiting(clock)
    async with sandbox(rate_limit_every=5) as sb:
        result, target = await upload(sb, path, clock=clock, config=config, on_event=before)
        assert BeforeWaiting.calls(target) == [
            "SpeckleServer",
            "ProjectModelByName",
            "CreateModel",
            "GenerateFileUploadUrl",
            "StartFileIngestion",
            "ModelIngestionHistory",  # not a query the sandbox answers: nothing found by file
            "StartFileIngestion",
            "Ingestion",
        ]
        assert_ingested_once(sb, result, digest)
    # The pause before sending again: the policy's backoff, never less than poll_interval.
    (pause,) = before.slept
    assert least <= pause <= most


# ---- terminal ingestion statuses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("failed", "failed to process"),
        ("cancelled", "cancelled"),
        ("timeout", "timed out"),
        ("invalidInput", "input is invalid"),
    ],
)
async def test_terminal_status_is_a_processing_error(
    tmp_path: Path, status: str, reason: str
) -> None:
    path, _ = ifc(tmp_path)
    async with sandbox(force_status=status) as sb:
        with pytest.raises(ProcessingError) as err:
            await upload(sb, path)
        assert err.value.code == status
        assert f"ended {status}: " in str(err.value) and reason in str(err.value)
        assert "\n" not in str(err.value)
        assert plane(sb).calls["startFileIngestion"] == 1
        assert not plane(sb).versions


async def test_failed_ingestion_reruns_from_the_start(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox(force_status="failed") as sb:
        with pytest.raises(ProcessingError):
            await upload(sb, path, journal=journal)
        void = journal_state(journal, client(sb).target(project_id=PROJECT), path)
        assert void.get(UploadVoided) == UploadVoided()
        assert void.get(UploadStarted) is None and not void.parts and not void.marks
        p = plane(sb)
        p.config = dataclasses.replace(p.config, force_status=None)
        result, target = await upload(sb, path, journal=journal)
        assert "GenerateFileUploadUrl" in target.calls  # the spent blob is not reused
        assert puts(sb) == 2
        assert p.calls["startFileIngestion"] == 2
        assert p.ingested_md5[result.file_id] == digest
        assert list(p.versions) == [result.version_id]


async def test_ingestion_deadline_with_the_live_status(tmp_path: Path) -> None:
    path, _ = ifc(tmp_path)
    clock = fake_clock()
    events: list[Event] = []
    async with sandbox(step_delay=10.0) as sb:
        target = client(sb, ingestion_deadline=0.05).target(project_id=PROJECT)
        with pytest.raises(ProcessingError, match=r"still queued after 0\.05 s") as err:
            await upload(sb, path, target=target, clock=clock, events=events)
        assert plane(sb).stats()["subscriptions"] == 1  # it waited on the subscription
    assert err.value.code == "deadline" and "--processing-timeout" in str(err.value)
    # Live: one poll at once (a change before the subscription started is not missed), then
    # the subscription until the deadline, then one poll to be sure.
    assert clock.slept == pytest.approx([0.05])
    assert target.calls.count("Ingestion") == 2
    phases = [e.message for e in events if isinstance(e, Phase)]
    assert "ingestion queued: scan.ifc is queued for import (1 s left)" in phases


async def test_ingestion_deadline_by_polling(tmp_path: Path) -> None:
    path, _ = ifc(tmp_path)
    clock = fake_clock()
    async with sandbox(step_delay=10.0, speckle_api="v2") as sb:  # v2: no subscription
        target = client(sb, ingestion_deadline=0.05).target(project_id=PROJECT)
        with pytest.raises(ProcessingError, match=r"file import \w+ still queued after 0\.05 s"):
            await upload(sb, path, target=target, clock=clock)
    # poll_interval 0.01 growing by half per poll, never sleeping past the deadline.
    assert clock.slept == pytest.approx([0.01, 0.015, 0.0225, 0.0025])
    assert target.calls.count("ModelUploads") == 5


# ---- errors --------------------------------------------------------------------------------------


async def _refused(sb: Sandbox, path: Path, **kw: Any) -> Exception:
    token = kw.pop("token", TOKEN)
    target = client(sb, token).target(project_id=kw.pop("project_id", PROJECT), **kw)
    with pytest.raises(Exception) as err:
        await upload(sb, path, target=target)
    message = str(err.value)
    assert "\n" not in message and token not in message
    return err.value


async def test_bad_token(tmp_path: Path) -> None:
    path, _ = ifc(tmp_path)
    async with sandbox() as sb:
        err = await _refused(sb, path, token="not-the-token")
        assert isinstance(err, AuthenticationError)
        assert "SPECKLE_TOKEN is not valid" in str(err)
        assert plane(sb).stats()["unauthenticated"] == 1  # not retried
        assert puts(sb) == 0


async def test_forbidden_project(tmp_path: Path) -> None:
    path, _ = ifc(tmp_path)
    async with sandbox(projects={PROJECT, "theirs"}) as sb:
        err = await _refused(sb, path, project_id="theirs")
        assert isinstance(err, PermissionDeniedError) and err.code == "FORBIDDEN"
        assert "ProjectModelByName" in str(err)


async def test_unknown_project(tmp_path: Path) -> None:
    path, _ = ifc(tmp_path)
    async with sandbox() as sb:
        err = await _refused(sb, path, project_id="nope")
        assert isinstance(err, NotFoundError) and err.code == "STREAM_NOT_FOUND"
        assert "project not found" in str(err)


async def test_unknown_model_id(tmp_path: Path) -> None:
    path, _ = ifc(tmp_path)
    async with sandbox() as sb:
        err = await _refused(sb, path, model_id="0123456789")
        # core/graph/resolvers/models.ts: Project.model answers BranchNotFoundError
        assert isinstance(err, NotFoundError) and err.code == "BRANCH_NOT_FOUND"
        assert "model not found" in str(err)
        assert plane(sb).calls["generateUploadUrl"] == 0 and puts(sb) == 0


async def test_the_servers_limit_is_refused_before_any_byte(tmp_path: Path) -> None:
    path, _ = ifc(tmp_path)
    async with sandbox(size_limit=SIZE // 2) as sb:  # blobSizeLimitBytes, below the file
        err = await _refused(sb, path)
        assert isinstance(err, TooLargeError)
        assert str(err) == (
            f"{path}: {SIZE} bytes exceed this Speckle server's file size limit of {SIZE // 2} "
            "bytes (serverInfo.configuration.blobSizeLimitBytes)"
        )
        assert puts(sb) == 0 and plane(sb).calls["generateUploadUrl"] == 0


async def test_invalid_model_name(tmp_path: Path) -> None:
    path, _ = ifc(tmp_path)
    async with sandbox() as sb:
        err = await _refused(sb, path, model_name="#scans")
        assert isinstance(err, InvalidRequestError) and err.code == "BRANCH_NAME_ERROR"


# ---- refused before any request ------------------------------------------------------------------


def _sparse(path: Path, size: int, head: bytes) -> Path:
    with path.open("wb") as f:
        f.write(head)
        f.truncate(size)
    return path


@pytest.mark.parametrize(
    ("name", "head", "size", "limit", "error", "words"),
    [
        ("big.ifc", b"ISO-10303-21;\n", 5 * 1024**3 + 1, None, TooLargeError, "5 GiB"),
        ("scan.ifc", b"ISO-10303-21;\n", SIZE, SIZE - 1, TooLargeError, f"{SIZE - 1} bytes"),
        ("scan.ifc", b"solid cube\n", SIZE, None, FormatError, "not an IFC file"),
        ("cloud.e57", b"ISO-10303-21;\n", SIZE, None, FormatError, "not an E57 file"),
        ("README", b"ISO-10303-21;\n", SIZE, None, FormatError, "no extension: not a format"),
        ("empty.ifc", b"", 0, None, FormatError, "not an IFC file"),
    ],
)
async def test_refused_before_any_request(
    tmp_path: Path,
    name: str,
    head: bytes,
    size: int,
    limit: int | None,
    error: type[Exception],
    words: str,
) -> None:
    path = _sparse(tmp_path / name, size, head)
    async with sandbox() as sb:
        target = client(sb, size_limit=limit).target(project_id=PROJECT)
        with pytest.raises(error, match=re.escape(words)):
            await upload(sb, path, target=target)
        assert plane(sb).stats()["requests"] == 0
        assert sb.store.stats()["requests"] == 0


# ---- credentials ---------------------------------------------------------------------------------


def test_credentials() -> None:
    creds = SpeckleCredentials.from_env({"SPECKLE_TOKEN": " secret-token\n"})
    assert creds.token == "secret-token"
    assert "secret" not in repr(creds) and "secret" not in repr(Speckle(creds))
    for env in ({}, {"SPECKLE_TOKEN": "  "}):
        with pytest.raises(AuthenticationError, match="SPECKLE_TOKEN is not set"):
            SpeckleCredentials.from_env(env)
    with pytest.raises(AuthenticationError, match="whitespace"):
        SpeckleCredentials("two words")
