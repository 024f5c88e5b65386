"""The Matterport and Speckle flows against a sandbox whose blobs live in real S3 storage.

The sandbox runs with ``storage_url`` pointing at moto's S3 server (started by ``conftest``):
every part and file is PUT by the engine straight to S3 through botocore-presigned SigV4 URLs,
and the sandbox completes the multipart uploads there. Each test then reads the object back
from S3 itself and checks its ETag (``"md5"`` for one PUT, ``"md5(md5s)-N"`` for N parts) and
its MD5 against the source.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest

from engine import MiB, PartDone, UploadConfig, Uploader
from engine.cli import main
from engine.events import Event
from engine.providers.matterport import Matterport, MatterportCredentials
from engine.providers.speckle import Speckle, SpeckleCredentials
from engine.sandbox.blobstore import BlobError
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.faults import FaultPlan
from engine.sandbox.ifc import write_sample_ifc
from engine.sandbox.matterport import MatterportPlane, MatterportSandboxConfig
from engine.sandbox.s3store import S3BlobStore, S3Location
from engine.sandbox.server import Sandbox, SandboxConfig
from engine.sandbox.speckle import SpecklePlane, SpeckleSandboxConfig
from tests.integration.conftest import s3_client

pytestmark = pytest.mark.anyio

PART = 5 * MiB  # S3's minimum part size: moto enforces it at completion
PREFIX = "sandbox"
CREDENTIALS = MatterportCredentials("sandbox-token-id", "sandbox-token-secret")


def storage_url(bucket: str, endpoint: str) -> str:
    return f"s3://{bucket}/{PREFIX}?endpoint_url={endpoint}&region=us-east-1"


def s3_etag(path: Path, part_size: int) -> str:
    """The ETag S3 gives ``path`` uploaded in ``part_size`` multipart parts (even just one)."""
    digests = []
    with path.open("rb") as f:
        while chunk := f.read(part_size):
            digests.append(hashlib.md5(chunk).digest())
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


def read_back(endpoint: str, bucket: str, key: str) -> tuple[str, str, int, dict[str, str]]:
    """(ETag, MD5 of the bytes, size, user metadata) of ``PREFIX/key`` as S3 serves it."""
    answer = s3_client(endpoint).get_object(Bucket=bucket, Key=f"{PREFIX}/{key}")
    md5 = hashlib.md5()
    size = 0
    body = answer["Body"]
    while chunk := body.read(MiB):
        md5.update(chunk)
        size += len(chunk)
    return str(answer["ETag"]), md5.hexdigest(), size, dict(answer.get("Metadata", {}))


def engine_config(**kw: Any) -> UploadConfig:
    kw.setdefault("part_size", PART)
    kw.setdefault("concurrency", 4)
    kw.setdefault("backoff_base", 0.0)
    return UploadConfig(**kw)


async def test_matterport_import_lands_in_s3_with_s3s_etags(
    tmp_path: Path, moto_endpoint: str, s3_bucket: str
) -> None:
    sizes = {"big.e57": 12 * MiB + 12345, "small.e57": 3 * MiB}
    md5s = {
        name: write_sample_e57(tmp_path / name, size, seed=i)
        for i, (name, size) in enumerate(sizes.items())
    }
    config = SandboxConfig(
        data_dir=tmp_path / "sandbox",
        storage_url=storage_url(s3_bucket, moto_endpoint),
        matterport=MatterportSandboxConfig(model_delay=0.0),
    )
    async with Sandbox(config) as sb, Uploader(engine_config()) as up:
        assert isinstance(sb.store, S3BlobStore)
        mp = next(p for p in sb.planes if isinstance(p, MatterportPlane))
        result = await Matterport(
            CREDENTIALS, endpoint=f"{sb.url}/api/import/graph", poll_interval=0.02
        ).import_files(up, [tmp_path / n for n in sizes], organization="sandbox-org")
        session = mp.session(result.session_id)
        assert session.failure is None and session.model_id == result.model_id
        stats = sb.store.stats()
    assert stats["s3_calls"]["CompleteMultipartUpload"] == 2 and not stats["s3_errors"]
    for record in session.files.values():
        source = tmp_path / record.name
        assert record.md5 == md5s[record.name]  # the sandbox's E57 check read S3's bytes
        etag, md5, size, _ = read_back(moto_endpoint, s3_bucket, record.key)
        assert (etag, md5, size) == (
            s3_etag(source, PART),
            md5s[record.name],
            source.stat().st_size,
        )
        assert record.stored is not None and record.stored.etag == etag
    etags = {r.name: r.stored.etag for r in session.files.values() if r.stored is not None}
    assert etags["big.e57"].endswith('-3"') and etags["small.e57"].endswith('-1"')


async def test_speckle_upload_lands_in_s3_as_one_put(
    tmp_path: Path, moto_endpoint: str, s3_bucket: str
) -> None:
    ifc = tmp_path / "tower.ifc"
    e57 = tmp_path / "site.e57"
    md5s = {
        ifc.name: write_sample_ifc(ifc, 6 * MiB, seed=3),
        e57.name: write_sample_e57(e57, 2 * MiB, seed=4),
    }
    config = SandboxConfig(
        data_dir=tmp_path / "sandbox",
        storage_url=storage_url(s3_bucket, moto_endpoint),
        speckle=SpeckleSandboxConfig(
            step_delay=0.0, additional_header=("x-amz-meta-via", "sandbox")
        ),
    )
    async with Sandbox(config) as sb, Uploader(engine_config()) as up:
        sp = next(p for p in sb.planes if isinstance(p, SpecklePlane))
        speckle = Speckle(SpeckleCredentials("sandbox-token"), server=sb.url, poll_interval=0.02)
        results = [
            await speckle.upload(up, path, project_id="sandbox-project") for path in (ifc, e57)
        ]
        for result, path in zip(results, (ifc, e57), strict=True):
            assert result.version_id and sp.versions[result.version_id].model_id == result.model_id
            assert sp.ingested_md5[result.file_id] == md5s[path.name]
            key = sp.blobs[result.file_id].key
            etag, md5, size, meta = read_back(moto_endpoint, s3_bucket, key)
            assert (etag, md5, size) == (
                f'"{md5s[path.name]}"',
                md5s[path.name],
                path.stat().st_size,
            )
            assert result.upload.parts[0].etag == etag  # startFileIngestion got S3's ETag, quoted
            assert meta == {"via": "sandbox"}  # the signed additional header was sent and kept
        assert set(sp.ingestions) == {r.ingestion_id for r in results}


async def test_presigned_urls_are_sigv4_and_sign_required_headers(
    tmp_path: Path, moto_endpoint: str, s3_bucket: str
) -> None:
    path = tmp_path / "scan.e57"
    md5 = write_sample_e57(path, 6 * MiB, seed=5)
    config = SandboxConfig(
        data_dir=tmp_path / "sandbox",
        storage_url=storage_url(s3_bucket, moto_endpoint),
        matterport=MatterportSandboxConfig(
            model_delay=0.0, part_headers=(("x-amz-meta-scanner", "unit-7"),)
        ),
    )
    async with Sandbox(config) as sb, Uploader(engine_config()) as up:
        store = sb.store
        upload_id = store.create_multipart("probe/one")
        url = store.presign_part(
            "probe/one", upload_id, 1, expires_in=60, required_headers={"X-Amz-Meta-A": "b"}
        )
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        assert f"{parts.scheme}://{parts.netloc}" == moto_endpoint
        assert parts.path == f"/{s3_bucket}/{PREFIX}/probe/one"  # path-style addressing
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
        assert query["X-Amz-Expires"] == ["60"]
        assert query["X-Amz-SignedHeaders"] == ["host;x-amz-meta-a"]
        assert query["partNumber"] == ["1"] and query["uploadId"] == [upload_id]
        store.abort_multipart(upload_id)
        with pytest.raises(BlobError) as refused:
            store.list_parts(upload_id)
        assert refused.value.code == "NoSuchUpload"

        mp = next(p for p in sb.planes if isinstance(p, MatterportPlane))
        result = await Matterport(
            CREDENTIALS, endpoint=f"{sb.url}/api/import/graph", poll_interval=0.02
        ).import_files(up, [path], organization="sandbox-org")
        assert mp.md5_of(result.session_id, "file1") == md5


async def test_a_cancelled_import_resumes_from_s3s_list_of_parts(
    tmp_path: Path, moto_endpoint: str, s3_bucket: str
) -> None:
    path = tmp_path / "big.e57"
    md5 = write_sample_e57(path, 6 * PART, seed=6)
    journal = tmp_path / "journal.jsonl"
    config = SandboxConfig(
        data_dir=tmp_path / "sandbox",
        storage_url=storage_url(s3_bucket, moto_endpoint),
        matterport=MatterportSandboxConfig(model_delay=0.0),
    )
    async with Sandbox(config) as sb:
        mp = next(p for p in sb.planes if isinstance(p, MatterportPlane))
        mport = Matterport(CREDENTIALS, endpoint=f"{sb.url}/api/import/graph", poll_interval=0.02)
        journaled: set[int] = set()
        with anyio.CancelScope() as scope:

            def stop_midway(event: Event) -> None:
                if isinstance(event, PartDone):  # journaled before it is reported
                    journaled.add(event.part)
                    if len(journaled) == 2:
                        scope.cancel()

            async with Uploader(
                engine_config(concurrency=2), on_event=stop_midway, journal=journal
            ) as up:
                await mport.import_files(up, [path], organization="sandbox-org")
        assert scope.cancelled_caught
        await anyio.sleep(0.2)  # let moto finish storing what was in flight
        (session,) = mp.sessions.values()
        (file,) = session.files.values()
        assert file.upload_id is not None
        held = {p.number for p in sb.store.list_parts(file.upload_id)}  # S3's ListParts
        assert 2 <= len(held) < 6

        sent: list[int] = []

        def count(event: Event) -> None:
            if isinstance(event, PartDone):
                sent.append(event.part)

        async with Uploader(engine_config(concurrency=2), on_event=count, journal=journal) as up:
            result = await mport.import_files(up, [path], organization="sandbox-org")
        assert result.session_id == session.id
        # what S3 lacked, and what it holds that the journal never saw stored (its ETag
        # unconfirmed): a part counts only when S3's ETag is the journaled one
        assert sorted(sent) == sorted(set(range(1, 7)) - (held & journaled))
        assert mp.md5_of(result.session_id, "file1") == md5
    etag, got_md5, _, _ = read_back(moto_endpoint, s3_bucket, file.key)
    assert (etag, got_md5) == (s3_etag(path, PART), md5)


async def test_storage_problems_are_one_line_errors(
    tmp_path: Path, moto_endpoint: str, s3_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = SandboxConfig(
        data_dir=tmp_path, storage_url=storage_url("no-such-bucket", moto_endpoint)
    )
    with pytest.raises(BlobError) as refused:
        async with Sandbox(missing):
            pass
    assert refused.value.code == "NoSuchBucket"

    with pytest.raises(ValueError, match="fault injection"):
        SandboxConfig(storage_url="s3://scans", faults=FaultPlan(rates={"503": 0.1}))
    with pytest.raises(ValueError, match="credentials"):
        S3Location.parse("s3://key:secret@scans?endpoint_url=http://127.0.0.1:1")
    with pytest.raises(ValueError, match="unknown storage URL parameter"):
        S3Location.parse("s3://scans?endpoint=http://127.0.0.1:1")
    with pytest.raises(ValueError, match="segment"):
        S3Location.parse("s3://scans/../etc")
    store = S3BlobStore(S3Location.parse("s3://scans"), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="fault injection"):
        store.faults = FaultPlan(rates={"reset": 0.5})

    code = await anyio.to_thread.run_sync(
        main,
        [
            "sandbox",
            "serve",
            "--port",
            "0",
            "--storage",
            storage_url("no-such-bucket", moto_endpoint),
        ],
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "NoSuchBucket" in err and "Traceback" not in err
    code = await anyio.to_thread.run_sync(
        main, ["sandbox", "serve", "--storage", "s3://scans", "--faults", "503=0.1"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--faults" in err
