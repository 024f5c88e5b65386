"""Issue 15, item 1: a crash between ``startFileIngestion`` and its answer never leaves a file
stuck or ingested twice, and recovery does not depend on one query working.

Each case is reproduced first (the run is cut when the journal holds ``ingestion-requested``, or
the journal holds a start the server answers differently), then rerun: the file is ingested
exactly once, or one clear line says what to do and a rerun after doing it succeeds.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from engine import ConflictError, Event, InvalidRequestError, PartDone, Phase
from engine.journal import (
    IngestionStarted,
    Mark,
    UploadStarted,
    UploadVoided,
)
from engine.sandbox.blobstore import GiB
from tests.functional.test_speckle import (
    PROJECT,
    BeforeWaiting,
    assert_ingested_once,
    client,
    fake_clock,
    ifc,
    journal_a_start,
    journal_state,
    plane,
    puts,
    raw_graphql,
    sandbox,
    upload,
)

pytestmark = pytest.mark.anyio


async def test_killed_when_the_mark_is_journaled(tmp_path: Path) -> None:
    """The run is cut as soon as the journal holds the mark: the start is on its way (the
    server may or may not have it). The rerun finds it or sends it, and ingests the file once."""
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox() as sb:
        with anyio.CancelScope() as scope:

            def kill(event: Event) -> None:  # the mark is on disk; the call goes out
                if isinstance(event, Phase) and event.message == "starting the ingestion":
                    scope.cancel()

            await upload(sb, path, journal=journal, on_event=kill)
        assert scope.cancelled_caught
        target = client(sb).target(project_id=PROJECT)
        st = journal_state(journal, target, path)
        assert Mark.INGESTION_REQUESTED in st.marks and st.get(IngestionStarted) is None
        reached = plane(sb).calls.get("startFileIngestion", 0)

        clock = fake_clock()
        before = BeforeWaiting(clock)
        result, target = await upload(sb, path, journal=journal, clock=clock, on_event=before)
        # The history cannot be read here; nothing else says the start happened: it is sent at
        # once (the server refuses a second one), and if it had arrived, the refusal says so
        # and the model's latest ingestion since the request is ours.
        found_by = ["ModelLatestIngestion"] if reached else []
        assert BeforeWaiting.calls(target) == [
            "SpeckleServer",
            "ModelIngestionHistory",
            "StartFileIngestion",
            *found_by,
            "Ingestion",
        ]
        assert sum(before.slept) == 0 and puts(sb) == 1
        p = plane(sb)
        assert len(p.ingestions) == len(p.versions) == 1
        assert p.ingested_md5[result.file_id] == digest


async def test_an_internal_error_of_an_unsupported_field_is_asked_once(tmp_path: Path) -> None:
    """A field the server cannot answer (here: ``blobSizeLimitBytes`` above GraphQL's 32-bit
    ``Int``, an INTERNAL_SERVER_ERROR as on the server) is not retried eight times: the client
    asks the rest apart and goes on."""
    path, digest = ifc(tmp_path)
    async with sandbox(size_limit=3 * GiB) as sb:
        result, target = await upload(sb, path)
        assert target.calls[:3] == ["SpeckleServer", "SpeckleServerApi", "SpeckleServerVersion"]
        assert plane(sb).stats()["operations"]["SpeckleServer"] == 1
        assert_ingested_once(sb, result, digest)


async def test_a_start_the_server_refuses_for_good_clears_the_mark(tmp_path: Path) -> None:
    """An unknown blob (a journal from a server that forgot it) is refused for good: the mark
    is voided, and the next run starts fresh instead of looking for it forever."""
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox() as sb:
        main = plane(sb).model_by_name(PROJECT, "main")
        assert main is not None
        target = client(sb).target(project_id=PROJECT, model_name="main")
        journal_a_start(journal, target, path, main.id, "f000000000")
        with pytest.raises(InvalidRequestError, match="use mutation generateUploadUrl") as err:
            await upload(sb, path, target=target, journal=journal)
        assert "\n" not in str(err.value)
        void = journal_state(journal, target, path)
        assert void.get(UploadVoided) == UploadVoided() and not void.marks

        result, again = await upload(sb, path, journal=journal, model_name="main")
        assert "GenerateFileUploadUrl" in again.calls
        p = plane(sb)
        assert p.ingested_md5[result.file_id] == digest
        assert list(p.ingestions) == [result.ingestion_id] and list(p.versions) == [
            result.version_id
        ]


async def test_registered_but_not_visible_says_what_to_do(tmp_path: Path) -> None:
    """The blob was registered but no ingestion of it can be seen (its start consumed the blob
    and failed on the model, like the server does): nothing is started again — one line says
    to ``touch`` the file and rerun, which then uploads it anew, once."""
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox() as sb:
        target = client(sb).target(project_id=PROJECT)
        with anyio.CancelScope() as scope:

            def stop(event: Event) -> None:  # the blob is stored, its start not asked for
                if isinstance(event, PartDone):
                    scope.cancel()

            await upload(sb, path, target=target, journal=journal, on_event=stop)
        st = journal_state(journal, target, path)
        started = st.get(UploadStarted)
        assert started is not None
        # Someone registers the blob elsewhere, against a model that is not there.
        mutation = (
            "mutation($i: StartFileImportInput!) "
            "{ fileUploadMutations { startFileIngestion(input: $i) { id } } }"
        )
        inputs = {"projectId": PROJECT, "modelId": "0000000000", "fileId": started.file_id}
        inputs["etag"] = st.parts[1].etag
        answer = await raw_graphql(sb, mutation, {"i": inputs})
        assert answer["errors"][0]["extensions"]["code"] == "MODEL_NOT_FOUND"

        with pytest.raises(ConflictError) as err:
            await upload(sb, path, journal=journal)
        line = str(err.value)
        assert "was registered by an earlier run" in line and "`touch` the file" in line
        assert "\n" not in line and not plane(sb).ingestions

        os.utime(path)  # touch: the journal sees a changed file and starts it over
        result, _ = await upload(sb, path, journal=journal)
        assert plane(sb).ingested_md5[result.file_id] == digest
        assert list(plane(sb).versions) == [result.version_id]
        assert len(plane(sb).ingestions) == 1
