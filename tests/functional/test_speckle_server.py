"""What a Speckle server says, as its public source says it, against the sandbox: absent models,
an unknown ingestion, the size limit before any byte and at the completion, the formats it
imports. Every refusal is one line, voids what cannot be finished, and a rerun starts cleanly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine import (
    Event,
    FormatError,
    NotFoundError,
    PartDone,
    TooLargeError,
    UploadConfig,
)
from engine.journal import (
    Journal,
    UploadVoided,
)
from engine.models import FileInfo
from engine.sandbox.e57 import write_sample_e57
from tests.functional.test_speckle import (
    PROJECT,
    SIZE,
    assert_ingested_once,
    client,
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


async def test_an_absent_model_is_created_whatever_code_says_so(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path, "tower.ifc")
    async with sandbox() as sb:
        # core/graph/resolvers/models.ts: an unknown name is BranchNotFoundError
        answer = await raw_graphql(
            sb,
            'query($p: String!) { project(id: $p) { modelByName(name: "tower") { id } } }',
            {"p": PROJECT},
        )
        assert answer["errors"][0]["extensions"]["code"] == "BRANCH_NOT_FOUND"  # type: ignore[index]
        result, target = await upload(sb, path)
        assert target.calls[1:3] == ["ProjectModelByName", "CreateModel"]
        model = plane(sb).model_by_name(PROJECT, "tower")
        assert model is not None and result.model_id == model.id
        assert_ingested_once(sb, result, digest)


async def test_an_ingestion_the_server_does_not_know_is_not_found(tmp_path: Path) -> None:
    """``Project.ingestion`` is nullable: ``null`` for an id the server does not know."""
    path, _ = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox() as sb:
        model = plane(sb).model_by_name(PROJECT, "main")
        assert model is not None
        target = client(sb).target(project_id=PROJECT, model_name="main")
        # an earlier run's journal, whose ingestion the server lost
        journal_a_start(journal, target, path, model.id, "f000000000", ingestion_id="0000000000")
        with pytest.raises(NotFoundError, match="ingestion 0000000000 not found") as err:
            await upload(sb, path, target=target, journal=journal)
        assert "\n" not in str(err.value) and puts(sb) == 0
        assert plane(sb).calls["startFileIngestion"] == 0


async def test_a_completion_refused_for_size_is_too_large_and_reruns_cleanly(
    tmp_path: Path,
) -> None:
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox() as sb:
        p = plane(sb)

        def shrink(event: Event) -> None:  # the project's limit drops while the file is sent
            if isinstance(event, PartDone):
                p.config = dataclasses.replace(p.config, size_limit=SIZE // 2)

        with pytest.raises(TooLargeError) as err:
            await upload(sb, path, journal=journal, on_event=shrink)
        # blobstorage/services/presigned.ts: "File size exceeds maximum allowed size of ..."
        assert str(err.value).startswith(f"{path}: {SIZE} bytes: the Speckle server refused")
        assert f"File size exceeds maximum allowed size of {SIZE // 2} bytes" in str(err.value)
        void = journal_state(journal, client(sb).target(project_id=PROJECT), path)
        assert void.get(UploadVoided) == UploadVoided() and not void.marks and not void.parts

        p.config = dataclasses.replace(p.config, size_limit=SIZE * 2)
        result, target = await upload(sb, path, journal=journal)
        assert "GenerateFileUploadUrl" in target.calls  # a fresh blob; nothing to "find"
        assert "ModelIngestionHistory" not in target.calls
        assert puts(sb) == 2 and p.calls["startFileIngestion"] == 2
        assert p.ingested_md5[result.file_id] == digest
        assert list(p.versions) == [result.version_id]


@pytest.mark.parametrize("api", ["v3", "v2"])
async def test_a_type_the_server_does_not_import_is_a_format_error(
    tmp_path: Path, api: str
) -> None:
    path = tmp_path / "cloud.e57"
    write_sample_e57(path, 64 * 1024, seed=5)
    journal = tmp_path / "journal.jsonl"
    async with sandbox(speckle_api=api, server_kind="self-hosted") as sb:  # IFC only
        for _ in range(2):  # the rerun starts fresh: a new blob, the same clear refusal
            with pytest.raises(FormatError) as err:
                await upload(sb, path, journal=journal)
            assert str(err.value).startswith(f"{path}: .e57: not a format this Speckle server")
            assert "UNSUPPORTED_FILE_TYPE" in str(err.value) and "\n" not in str(err.value)
            void = journal_state(journal, client(sb).target(project_id=PROJECT), path)
            assert void.get(UploadVoided) == UploadVoided() and not void.marks
        assert puts(sb) == 2 and not plane(sb).versions


async def test_other_formats_go_to_the_server(tmp_path: Path) -> None:
    """app.speckle.systems imports OBJ (the Rhino importer's list, packages/shared blobs):
    the client sends it rather than refusing it for its extension."""
    path = tmp_path / "mesh.obj"
    path.write_bytes(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n" * 1000)
    async with sandbox(server_kind="app") as sb:
        result, _ = await upload(sb, path, config=UploadConfig(backoff_base=0, backoff_cap=0))
        assert result.version_id and plane(sb).versions[result.version_id].model_id
        assert plane(sb).calls["startFileIngestion"] == 1


async def test_a_done_file_whose_version_is_gone_is_uploaded_again(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox() as sb:
        target = client(sb).target(project_id=PROJECT)
        j = Journal(journal)  # the journal of a server whose version was deleted since
        fj = j.for_key(target.journal_key(FileInfo.of(path)))
        fj.begin(FileInfo.of(path))
        fj.done(
            {
                "project_id": PROJECT,
                "model_id": "m000000000",
                "file_id": "f000000000",
                "ingestion_id": "i000000000",
                "version_id": "v000000000",
            }
        )
        j.close()
        events: list[Event] = []
        result, again = await upload(sb, path, target=target, journal=journal, events=events)
        assert again.calls[0] == "ProjectVersion"  # COMMIT_NOT_FOUND: not held
        assert any(
            "the server has no version v000000000" in getattr(e, "message", "") for e in events
        )
        assert_ingested_once(sb, result, digest)
