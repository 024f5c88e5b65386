"""ETags as real stores answer them: SSE-KMS / SSE-C buckets, and Azure Blob storage.

The engine compares an ETag with the MD5 of the bytes only when the answer says it can be one
(an S3-style quoted 32-hex ETag, no SSE-KMS / DSSE / SSE-C header); otherwise it checks the
``Content-MD5`` the store computed (Azure's Put Blob), and where nothing can be checked it
accepts the answer, says so once per file and stops hashing. Against the sandbox's ``kms``,
``sse-c`` and ``azure`` storage modes (taken from the S3 and Azure documentation by the
sandbox's own authors).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import engine.transfer
from engine import (
    Event,
    KiB,
    PartLimits,
    PartRetry,
    Phase,
    PresignedMultipart,
    TooLargeError,
    UploadConfig,
    Uploader,
)
from engine.clock import FakeClock
from engine.models import PartRequest, PartResult, PartSpec
from engine.providers.matterport import Matterport, MatterportCredentials
from engine.providers.speckle import Speckle, SpeckleCredentials
from engine.retry import Integrity, integrity_of
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.ifc import write_sample_ifc
from engine.sandbox.matterport import MatterportPlane, MatterportSandboxConfig
from engine.sandbox.server import Sandbox, SandboxConfig
from engine.sandbox.speckle import SpecklePlane, SpeckleSandboxConfig
from engine.target import Target
from engine.transport import AZURE_MAX_PUT, check_put_size

pytestmark = pytest.mark.anyio

PART = 256 * KiB
MD5 = "5d41402abc4b2a76b9719d911017c592"  # of b"hello"
MD5_B64 = "XUFAKrxLKna5cZ2REBfFkg=="
UNCHECKED = "the store's ETags cannot be checked against the bytes sent"


# ---- what an answer allows (pure) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("etag", "headers", "check", "why"),
    [
        (f'"{MD5}"', {}, "etag", ""),
        (f'"{MD5.upper()}"', {}, "etag", ""),
        (f'"{MD5}"', {"x-amz-server-side-encryption": "AES256"}, "etag", ""),  # SSE-S3: an MD5
        (f'"{MD5}"', {"x-amz-server-side-encryption": "aws:kms"}, "none", "SSE-KMS (aws:kms)"),
        (f'"{MD5}"', {"x-amz-server-side-encryption": "aws:kms:dsse"}, "none", "aws:kms:dsse"),
        (
            f'"{MD5}"',
            {"x-amz-server-side-encryption-customer-algorithm": "AES256"},
            "none",
            "SSE-C",
        ),
        (MD5, {}, "none", "are not MD5s"),  # not S3's quoted form
        (f'"{MD5}-3"', {}, "none", "are not MD5s"),  # a multipart object
        ('"0x8DC0FFEE0123456"', {"content-md5": MD5_B64}, "content-md5", ""),  # Azure
        (
            f'"{MD5}"',
            {"x-amz-server-side-encryption": "aws:kms", "content-md5": MD5_B64},
            "content-md5",
            "",
        ),
        ('"0x8DC0FFEE0123456"', {"x-ms-content-crc64": "AAAAAAAAAAA="}, "none", "CRC-64 only"),
        ('"0x8DC0FFEE0123456"', {"content-md5": "not base64!"}, "none", "are not MD5s"),
    ],
)
def test_an_etag_is_compared_only_where_the_answer_says_it_can_be_an_md5(
    etag: str, headers: Mapping[str, str], check: str, why: str
) -> None:
    found = integrity_of(etag, headers)
    assert found.check == check
    assert why in found.why
    if check != "none":
        assert found.md5 == MD5
        assert found.mismatch(MD5) is None
        wrong = found.mismatch("0" * 32)
        assert wrong is not None and wrong.kind == "transient"
        what = "ETag" if check == "etag" else "Content-MD5"
        assert wrong.reason == f"{what} does not match the MD5 of the bytes sent"


def test_nothing_is_compared_when_nothing_was_hashed() -> None:
    assert Integrity("etag", MD5).mismatch("") is None  # hashing off: no verdict
    assert Integrity("none", why="x").mismatch("0" * 32) is None


# ---- S3 buckets with SSE-KMS and SSE-C -----------------------------------------------------------


@asynccontextmanager
async def storage(mode: str, tmp_path: Path, **config: Any) -> AsyncIterator[Sandbox]:
    config.setdefault("min_part_size", PART)
    async with Sandbox(
        SandboxConfig(data_dir=tmp_path / "data", storage_mode=mode, **config)
    ) as sb:
        yield sb


@pytest.fixture
def md5_flags(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Whether each PUT was hashed: the engine's own ``put_range``, watched on its way."""
    flags: list[bool] = []
    real = engine.transfer.put_range

    async def watched(*args: Any, **kwargs: Any) -> Any:
        flags.append(bool(kwargs.get("md5", True)))
        return await real(*args, **kwargs)

    monkeypatch.setattr(engine.transfer, "put_range", watched)
    yield flags


def multipart_into(sb: Sandbox, key: str) -> PresignedMultipart:
    upload_id = sb.store.create_multipart(key)

    def complete(parts: Sequence[PartResult]) -> dict[str, str]:
        done = sb.store.complete_multipart(key, upload_id, [(p.number, p.etag) for p in parts])
        return {"etag": done.etag, "md5": done.md5}

    return PresignedMultipart(
        lambda n: sb.store.presign_part(key, upload_id, n),
        complete,
        limits=PartLimits(min_size=PART),
    )


def single_put(sb: Sandbox, key: str, headers: tuple[tuple[str, str], ...] = ()) -> Target:
    """One presigned PUT of the whole file into ``key`` (with ``headers``)."""
    return PresignedMultipart(
        lambda n: PartRequest(sb.store.presign_put(key), "PUT", headers),
        lambda parts: {"etag": parts[0].etag},
        limits=PartLimits(single=True),
    )


def write(path: Path, size: int) -> str:
    data = hashlib.sha256(path.name.encode()).digest() * (size // 32 + 1)
    path.write_bytes(data[:size])
    return hashlib.md5(data[:size]).hexdigest()


def unchecked(events: list[Event]) -> list[str]:
    return [e.message for e in events if isinstance(e, Phase) and UNCHECKED in e.message]


async def test_a_kms_bucket_takes_every_part_without_a_retry_and_hashing_stops(
    tmp_path: Path, md5_flags: list[bool]
) -> None:
    """The issue's failure: 'part 1 failed 8 times; last: ETag does not match the MD5'."""
    src = tmp_path / "scan.e57"
    md5 = write(src, 5 * PART + 77)
    events: list[Event] = []
    async with storage("kms", tmp_path) as sb:
        config = UploadConfig(part_size=PART, concurrency=1, max_attempts=2)
        async with Uploader(config, on_event=events.append, clock=FakeClock()) as up:
            result = await up.upload(src, multipart_into(sb, "kms/scan.e57"))
        stored = sb.store.head("kms/scan.e57")
    assert stored is not None and stored.md5 == md5  # byte-identical
    assert not [e for e in events if isinstance(e, PartRetry)] and result.retries == 0
    etags = [p.etag.strip('"') for p in result.parts]
    assert all(len(e) == 32 for e in etags)  # 32 hex digits, and not the MD5s of the parts
    data = src.read_bytes()
    assert etags[0] != hashlib.md5(data[:PART]).hexdigest()
    (message,) = unchecked(events)  # said once for the file
    assert message.endswith(
        "it encrypts with SSE-KMS (aws:kms), whose ETags are not MD5s; accepted as answered, "
        "not verified"
    )
    assert md5_flags == [True, False, False, False, False, False]  # no MD5 after the first


async def test_a_kms_single_put_is_accepted_and_said_once(tmp_path: Path) -> None:
    src = tmp_path / "one.ifc"
    md5 = write(src, 100 * KiB)
    events: list[Event] = []
    async with storage("kms", tmp_path) as sb:
        async with Uploader(on_event=events.append, clock=FakeClock()) as up:
            result = await up.upload(src, single_put(sb, "kms/one.ifc"))
        stored = sb.store.head("kms/one.ifc")
    assert stored is not None and stored.md5 == md5
    assert result.remote.ids["etag"].strip('"') != md5  # type: ignore[attr-defined]
    assert len(unchecked(events)) == 1


def matterport_of(sb: Sandbox) -> tuple[Matterport, MatterportPlane]:
    plane = next(p for p in sb.planes if isinstance(p, MatterportPlane))
    client = Matterport(
        MatterportCredentials("sandbox-token-id", "sandbox-token-secret"),
        endpoint=f"{sb.url}/api/import/graph",
        poll_interval=0.01,
    )
    return client, plane


@pytest.mark.parametrize("mode", ["kms", "sse-c"])
async def test_matterport_into_an_encrypted_bucket(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "scan.e57"
    md5 = write_sample_e57(path, 900 * KiB, seed=5)
    events: list[Event] = []
    planes = {"matterport": MatterportSandboxConfig(min_part_size=PART, model_delay=0.02)}
    async with storage(mode, tmp_path, min_part_size=0, **planes) as sb:
        client, plane = matterport_of(sb)
        config = UploadConfig(part_size=PART, max_attempts=2)
        async with Uploader(config, on_event=events.append, clock=FakeClock()) as up:
            result = await client.import_files(up, [path], organization="sandbox-org")
        assert plane.md5_of(result.session_id, "file1") == md5
    assert result.model_id and len(result.files[0].parts) == 4
    assert not [e for e in events if isinstance(e, PartRetry)]
    (message,) = unchecked(events)
    assert ("SSE-KMS" if mode == "kms" else "SSE-C") in message


# ---- Azure Blob storage --------------------------------------------------------------------------

BLOCK_BLOB = (("x-ms-blob-type", "BlockBlob"),)


async def test_azure_put_blob_is_checked_by_its_content_md5(
    tmp_path: Path, md5_flags: list[bool]
) -> None:
    src = tmp_path / "m.ifc"
    md5 = write(src, 300 * KiB)
    events: list[Event] = []
    async with storage("azure", tmp_path) as sb:
        async with Uploader(on_event=events.append, clock=FakeClock()) as up:
            result = await up.upload(src, single_put(sb, "az/m.ifc", BLOCK_BLOB))
        stored = sb.store.head("az/m.ifc")
    assert stored is not None and stored.md5 == md5
    assert result.parts[0].etag.startswith('"0x8D')  # 201 Created, an opaque ETag
    assert not unchecked(events) and md5_flags == [True]  # verified: nothing to say


async def test_an_expired_sas_gets_a_fresh_url_and_a_retry(tmp_path: Path) -> None:
    src = tmp_path / "e.ifc"
    md5 = write(src, 50 * KiB)
    asked: list[int] = []
    events: list[Event] = []
    async with storage("azure", tmp_path) as sb:

        def url(n: int) -> PartRequest:
            asked.append(n)
            life = -60.0 if len(asked) == 1 else 600.0  # the first SAS has expired already
            return PartRequest(sb.store.presign_put("az/e.ifc", expires_in=life), "PUT", BLOCK_BLOB)

        target = PresignedMultipart(url, lambda parts: None, limits=PartLimits(single=True))
        async with Uploader(on_event=events.append, clock=FakeClock()) as up:
            await up.upload(src, target)
        stored = sb.store.head("az/e.ifc")
    assert stored is not None and stored.md5 == md5
    (retry,) = [e for e in events if isinstance(e, PartRetry)]
    assert retry.reason.startswith("HTTP 403 AuthenticationFailed: Server failed to authenticate")
    assert "Signed expiry time [" in retry.reason and "\n" not in retry.reason
    assert retry.delay == 0 and asked == [1, 1]  # at once, with a fresh URL


def test_a_single_put_to_azure_is_capped_at_5000_mib() -> None:
    big = PartSpec(1, 0, AZURE_MAX_PUT + 1)
    with pytest.raises(TooLargeError, match=r"more than Azure Blob storage takes in one upload"):
        check_put_size(PartRequest("https://a.blob.core.windows.net/c/b", "PUT", BLOCK_BLOB), big)
    check_put_size(
        PartRequest("https://a.blob.core.windows.net/c/b", "PUT", BLOCK_BLOB),
        PartSpec(1, 0, AZURE_MAX_PUT),
    )
    check_put_size(PartRequest("https://s3.example/b/k"), big)  # S3 takes up to 5 GiB


async def test_a_file_above_the_azure_cap_is_refused_before_a_byte(tmp_path: Path) -> None:
    src = tmp_path / "huge.ifc"
    with src.open("wb") as f:
        f.truncate(AZURE_MAX_PUT + 1)  # sparse: nothing is read before the refusal
    async with storage("azure", tmp_path) as sb:
        async with Uploader(clock=FakeClock()) as up:
            with pytest.raises(TooLargeError, match=r"huge\.ifc: .+ is more than Azure Blob"):
                await up.upload(src, single_put(sb, "az/huge.ifc", BLOCK_BLOB))
        assert sb.store.stats()["requests"] == 0


async def test_speckle_behind_azure(tmp_path: Path) -> None:
    """Speckle's ``additionalRequestHeaders`` carry ``x-ms-blob-type``; the 201 and its opaque
    ETag are taken, and the ETag goes to ``startFileIngestion`` as the store returned it."""
    path = tmp_path / "tower.ifc"
    md5 = write_sample_ifc(path, 150_000, seed=4)
    events: list[Event] = []
    speckle = SpeckleSandboxConfig(step_delay=0.0)
    async with storage("azure", tmp_path, speckle=speckle) as sb:
        plane = next(p for p in sb.planes if isinstance(p, SpecklePlane))
        client = Speckle(SpeckleCredentials("sandbox-token"), server=sb.url, poll_interval=0.01)
        async with Uploader(on_event=events.append, clock=FakeClock()) as up:
            result = await client.upload(up, path, project_id="sandbox-project")
        assert plane.ingested_md5[result.file_id] == md5
    assert result.version_id and result.upload.parts[0].etag.startswith('"0x8D')
    assert not [e for e in events if isinstance(e, PartRetry)] and not unchecked(events)
