"""What a Speckle server says, as its public source says it, against the sandbox: absent models,
an unknown ingestion, the size limit before any byte and at the completion, the formats it
imports. Every refusal is one line, voids what cannot be finished, and a rerun starts cleanly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiohttp
import pytest

from engine import Event, FormatError, NotFoundError, PartDone, TooLargeError, UploadConfig
from engine.journal import (
    IngestionRequested,
    IngestionStarted,
    Journal,
    Mark,
    SpeckleApiChosen,
    UploadStarted,
    UploadVoided,
)
from engine.models import FileInfo, PartResult
from engine.sandbox.e57 import write_sample_e57
from tests.functional.test_speckle import (
    PROJECT,
    SIZE,
    TOKEN,
    assert_ingested_once,
    client,
    ifc,
    journal_state,
    plane,
    puts,
    sandbox,
    upload,
)

pytestmark = pytest.mark.anyio


async def _graphql(url: str, query: str, variables: dict[str, object]) -> dict[str, object]:
    async with aiohttp.ClientSession() as http:
        body = {"query": query, "variables": variables}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(f"{url}/graphql", json=body, headers=headers) as r:
            answer: dict[str, object] = await r.json()
            return answer


async def test_an_absent_model_is_created_whatever_code_says_so(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path, "tower.ifc")
    async with sandbox() as sb:
        # core/graph/resolvers/models.ts: an unknown name is BranchNotFoundError
        answer = await _graphql(
            sb.url,
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
        j = Journal(journal)  # an earlier run's journal, whose ingestion the server lost
        fj = j.for_key(target.journal_key(FileInfo.of(path)))
        fj.begin(FileInfo.of(path))
        fj.record(UploadStarted(project_id=PROJECT, model_id=model.id, file_id="f000000000"))
        fj.part_done(PartResult(1, '"0123"', SIZE))
        fj.record(SpeckleApiChosen(api="v3"))
        fj.record(IngestionRequested(etag='"0123"', requested_at="2026-01-01T00:00:00+00:00"))
        fj.mark(Mark.INGESTION_REQUESTED)
        fj.record(IngestionStarted(ingestion_id="0000000000"))
        j.close()
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
