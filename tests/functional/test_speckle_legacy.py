"""Servers without the ingestion API: the v2 file import and the legacy REST upload, detected or
forced, journaled like the v3 path, resumed without a second import.

The sandbox serves the public server's APIs: ``speckle_api="v2"`` (generateUploadUrl,
startFileImport, Model.uploads, the REST route) and ``"legacy"`` (before 2.25.8: the REST route
and the deprecated ``stream.fileUpload``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from pathlib import Path

import anyio
import pytest

from engine import Event, InvalidRequestError, MiB, Phase, TooLargeError, Uploader
from engine.journal import IngestionStarted, Mark, SpeckleApiChosen, UploadStarted, UploadVoided
from engine.models import FileInfo
from engine.providers.speckle import ServerApi
from engine.providers.speckle.legacy import rest_form
from engine.source import FileSource
from tests.functional.test_speckle import (
    CONFIG,
    PROJECT,
    SIZE,
    AnswerLost,
    client,
    fake_clock,
    ifc,
    journal_state,
    plane,
    puts,
    sandbox,
    upload,
)

pytestmark = pytest.mark.anyio


async def test_v2_start_file_import_and_the_models_uploads(tmp_path: Path) -> None:
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox(speckle_api="v2") as sb:
        result, target = await upload(sb, path, journal=journal)
        assert target.api == "v2"
        assert target.calls[:6] == [
            "SpeckleServer",
            "ProjectModelByName",
            "CreateModel",
            "GenerateFileUploadUrl",  # without additionalRequestHeaders: not in v2's schema
            "StartFileImport",
            "ModelUploads",
        ]
        p = plane(sb)
        assert p.calls["startFileImport"] == 1 and "startFileIngestion" not in p.calls
        assert p.ingested_md5[result.file_id] == digest and puts(sb) == 1
        assert result.ingestion_id == result.file_id  # the FileUpload's id is the blob's
        assert list(p.versions) == [result.version_id]
        st = journal_state(journal, target, path)
        assert st.get(SpeckleApiChosen) == SpeckleApiChosen(api="v2")
        assert st.get(IngestionStarted) == IngestionStarted(ingestion_id=result.file_id)


@pytest.mark.parametrize(("api", "forced"), [("legacy", "auto"), ("v2", "rest")])
async def test_the_legacy_rest_upload(tmp_path: Path, api: str, forced: str) -> None:
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox(speckle_api=api) as sb:
        target = client(sb, api=forced).target(project_id=PROJECT)
        result, _ = await upload(sb, path, target=target, journal=journal)
        assert target.api == "rest"
        assert target.calls[:3] == ["SpeckleServer", "ProjectModelByName", "CreateModel"]
        p = plane(sb)
        assert p.stats()["rest_uploads"] == 1 and p.calls.get("generateUploadUrl", 0) == 0
        assert p.ingested_md5[result.file_id] == digest
        assert list(p.versions) == [result.version_id]
        assert result.ingestion_id == result.file_id
        st = journal_state(journal, target, path)
        assert st.get(UploadStarted) == UploadStarted(
            project_id=PROJECT, model_id=result.model_id, file_id=""
        )  # the blob is named by the POST's answer
        assert st.get(SpeckleApiChosen) == SpeckleApiChosen(api="rest")
        assert st.get(IngestionStarted) == IngestionStarted(ingestion_id=result.file_id)
        assert Mark.INGESTION_REQUESTED in st.marks


async def test_the_rest_body_has_its_length_up_front(tmp_path: Path) -> None:
    """aiohttp sends a ``Content-Length`` for a payload whose size is known (never chunked):
    the multipart body's size is the bytes it writes, and its file part is read from disk a
    chunk at a time."""
    path, _ = ifc(tmp_path)
    reads: list[int] = []

    class Sink(io.BytesIO):
        async def write(self, data: bytes) -> None:  # type: ignore[override]
            reads.append(len(data))
            super().write(data)

    with FileSource(FileInfo.of(path)) as source:
        form, _ = rest_form(source.fd, path.name, SIZE, 16 * 1024, lambda n: None)
        sink = Sink()
        await form.write(sink)  # type: ignore[arg-type]
    assert form.size == len(sink.getvalue()) > SIZE
    assert max(reads) <= 16 * 1024  # the file in chunks, never whole
    assert b'name="file"; filename="scan.ifc"' in sink.getvalue()[:400]


async def test_a_file_over_the_rest_limit_is_too_large_and_voided(tmp_path: Path) -> None:
    """busboy truncates a file above the limit: ``uploadError`` "File size limit reached"
    (blobstorage/services/management.ts). The client refuses such a file before sending it
    once the server told its limit; here the limit drops after it was told."""
    path, _ = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox(speckle_api="legacy") as sb:
        target = client(sb).target(project_id=PROJECT)
        p = plane(sb)

        def shrink(event: Event) -> None:
            if isinstance(event, Phase) and event.message.startswith("model "):
                p.config = dataclasses.replace(p.config, size_limit=SIZE // 2)

        with pytest.raises(TooLargeError, match="File size limit reached") as err:
            await upload(sb, path, target=target, journal=journal, on_event=shrink)
        assert "\n" not in str(err.value) and p.stats()["rest_uploads"] == 1
        void = journal_state(journal, target, path)
        assert void.get(UploadVoided) == UploadVoided() and not void.marks


async def test_a_forced_api_the_server_lacks_says_so(tmp_path: Path) -> None:
    path, _ = ifc(tmp_path)
    async with sandbox(speckle_api="legacy") as sb:
        target = client(sb, api="v2").target(project_id=PROJECT)
        with pytest.raises(InvalidRequestError, match="use --speckle-api auto") as err:
            await upload(sb, path, target=target)
        assert "\n" not in str(err.value) and puts(sb) == 0


async def test_a_guessed_v3_steps_down_to_the_v2_import(tmp_path: Path) -> None:
    """A server that does not show its schema (introspection off) and whose version says
    nothing is tried as v3; the first v3 document it refuses in validation (nothing ran)
    turns the file over to what it has, the same blob included."""
    path, digest = ifc(tmp_path)
    async with sandbox(speckle_api="v2") as sb:
        speckle = client(sb)
        target = speckle.target(project_id=PROJECT)
        async with Uploader(CONFIG, clock=fake_clock()) as up:
            session = speckle.session(up.services)
            session._api = ServerApi("v3", "dev", None, live=True)  # what a guess looks like
            result = await up.upload(path, target)
        assert target.calls[:7] == [  # nothing asked first: the session knows (guesses)
            "ProjectModelByName",
            "CreateModel",
            "GenerateFileUploadUrl",  # with additionalRequestHeaders: refused
            "GenerateFileUploadUrl",
            "StartFileIngestion",  # refused in validation: nothing ran
            "StartFileImport",
            "ModelUploads",
        ]
        assert plane(sb).ingested_md5[result.remote.file_id] == digest  # type: ignore[attr-defined]
        assert plane(sb).calls["startFileImport"] == 1


@pytest.mark.parametrize("api", ["v2", "legacy"])
async def test_a_lost_rest_answer_is_found_not_posted_twice(tmp_path: Path, api: str) -> None:
    path, digest = ifc(tmp_path)
    journal = tmp_path / "journal.jsonl"
    async with sandbox(speckle_api=api) as sb:
        speckle = client(sb, api="rest")
        with pytest.raises(KeyboardInterrupt):
            await upload(sb, path, target=AnswerLost(speckle, project_id=PROJECT), journal=journal)
        p = plane(sb)
        assert p.stats()["rest_uploads"] == 1
        (upload_id,) = p.ingestions

        target = speckle.target(project_id=PROJECT)
        result, _ = await upload(sb, path, target=target, journal=journal)
        assert p.stats()["rest_uploads"] == 1  # found among the uploads, not posted again
        assert result.ingestion_id == upload_id
        lookup = "ModelUploads" if api == "v2" else "StreamFileUploads"
        assert target.calls[:3] == [
            "SpeckleServer",
            lookup,
            lookup if api == "v2" else "StreamFileUpload",
        ]
        assert p.ingested_md5[result.file_id] == digest
        assert list(p.versions) == [result.version_id]


REST_CHILD = r"""
import json, resource, sys, anyio
from engine import UploadConfig, Uploader
from engine.providers.speckle import Speckle, SpeckleCredentials

def peak():  # the high-water mark of this process's resident memory, in bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

async def main(url, path):
    speckle = Speckle(SpeckleCredentials("sandbox-token"), server=url, api="rest",
                      poll_interval=0.05)
    async with Uploader(UploadConfig()) as up:
        baseline = peak()
        result = await speckle.upload(up, path, project_id="sandbox-project")
    print(json.dumps({"baseline": baseline, "peak": peak(), "size": result.upload.size,
                      "version": result.version_id}))

anyio.run(main, *sys.argv[1:3])
"""


@pytest.mark.slow
async def test_the_rest_upload_streams_from_disk(tmp_path: Path) -> None:
    """A 256 MiB file through the legacy route: the child's peak RSS (its high-water mark
    before and after the upload) grows by about a chunk and the interpreter's buffers, not by
    the file (the memory bound of a PUT)."""
    size = 256 * MiB
    big = tmp_path / "big.ifc"
    tail = b"END-ISO-10303-21;\n"
    with big.open("wb") as f:  # sparse: a valid IFC header and end, zeros between
        f.write(b"ISO-10303-21;\n")
        f.truncate(size - len(tail))
        f.seek(size - len(tail))
        f.write(tail)
    async with sandbox(speckle_api="legacy", size_limit=512 * MiB, discard=True) as sb:
        argv = [sys.executable, "-c", REST_CHILD, sb.url, str(big)]
        proc = await anyio.run_process(argv, check=False)
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        report = json.loads(proc.stdout)
        assert report["size"] == size and report["version"]
        assert plane(sb).stats()["rest_uploads"] == 1
    grew = report["peak"] - report["baseline"]
    assert grew <= 32 * MiB, f"peak grew {grew / MiB:.1f} MiB for a {size / MiB:.0f} MiB file"
    print(f"REST upload of {size / MiB:.0f} MiB: peak RSS grew {grew / MiB:.1f} MiB")
