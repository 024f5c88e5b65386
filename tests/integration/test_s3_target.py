"""S3Target against an S3-compatible server started by the test (moto in server mode, loopback).

Multipart and single-PUT uploads arrive byte-identical with S3's ETags; a journaled upload
resumes with ListParts and sends only the missing parts; failures map to engine errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anyio
import pytest

from engine import (
    AuthenticationError,
    KiB,
    MiB,
    NotFoundError,
    PartDone,
    UploadConfig,
    Uploader,
)
from engine.errors import ConfigError
from engine.events import Event
from engine.providers.s3 import S3Target, parse_s3_url

from .conftest import s3_client


@pytest.fixture
def endpoint(moto_endpoint: str) -> str:
    """The session's moto S3 server (``tests/integration/conftest.py``)."""
    return moto_endpoint


@pytest.fixture
def bucket(s3_bucket: str) -> str:
    return s3_bucket


def _sample(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def _multipart_etag(data: bytes, part: int) -> str:
    digests = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket/a/b.e57") == ("bucket", "a/b.e57")
    for bad in ("http://x/y", "s3://bucket", "s3:///key"):
        with pytest.raises(ConfigError):
            parse_s3_url(bad)


def test_multipart_upload_arrives_byte_identical(
    tmp_path: Path, endpoint: str, bucket: str
) -> None:
    part = 5 * MiB
    data = _sample(tmp_path / "scan.e57", 2 * part + 300 * KiB)
    target = S3Target(bucket, "in/scan.e57", endpoint_url=endpoint, region="us-east-1")

    async def main() -> None:
        async with Uploader(UploadConfig(part_size=part, concurrency=3)) as up:
            result = await up.upload(tmp_path / "scan.e57", target)
        assert len(result.parts) == 3
        assert result.remote.etag == _multipart_etag(data, part)

    anyio.run(main)
    got = s3_client(endpoint).get_object(Bucket=bucket, Key="in/scan.e57")
    assert got["Body"].read() == data
    assert got["ETag"] == _multipart_etag(data, part)


def test_small_file_is_one_presigned_put(tmp_path: Path, endpoint: str, bucket: str) -> None:
    data = _sample(tmp_path / "small.ifc", 700 * KiB)
    target = S3Target(bucket, "small.ifc", endpoint_url=endpoint)

    async def main() -> None:
        async with Uploader(UploadConfig(part_size=5 * MiB)) as up:
            result = await up.upload(tmp_path / "small.ifc", target)
        assert result.remote.etag == f'"{hashlib.md5(data).hexdigest()}"'

    anyio.run(main)
    assert s3_client(endpoint).get_object(Bucket=bucket, Key="small.ifc")["Body"].read() == data


def test_a_rerun_resumes_the_journaled_upload(tmp_path: Path, endpoint: str, bucket: str) -> None:
    part = 5 * MiB
    data = _sample(tmp_path / "big.e57", 4 * part)
    journal = tmp_path / "journal.jsonl"
    done: list[int] = []

    async def first() -> None:
        with anyio.CancelScope() as scope:

            def stop(event: Event) -> None:
                if isinstance(event, PartDone):
                    done.append(event.part)
                    scope.cancel()

            cfg = UploadConfig(part_size=part, concurrency=1)
            async with Uploader(cfg, on_event=stop, journal=journal) as up:
                await up.upload(
                    tmp_path / "big.e57", S3Target(bucket, "big.e57", endpoint_url=endpoint)
                )

    anyio.run(first)
    assert done == [1]
    sent: list[int] = []

    async def second() -> None:
        def seen(event: Event) -> None:
            if isinstance(event, PartDone):
                sent.append(event.part)

        cfg = UploadConfig(part_size=part, concurrency=2)
        async with Uploader(cfg, on_event=seen, journal=journal) as up:
            await up.upload(
                tmp_path / "big.e57", S3Target(bucket, "big.e57", endpoint_url=endpoint)
            )

    anyio.run(second)
    assert sorted(sent) == [2, 3, 4]
    got = s3_client(endpoint).get_object(Bucket=bucket, Key="big.e57")
    assert got["Body"].read() == data


def test_errors_map_to_engine_errors(
    tmp_path: Path, endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sample(tmp_path / "f.e57", 6 * MiB)

    async def upload(target: S3Target) -> None:
        async with Uploader(UploadConfig(part_size=5 * MiB)) as up:
            await up.upload(tmp_path / "f.e57", target)

    with pytest.raises(NotFoundError, match="NoSuchBucket") as missing:
        anyio.run(upload, S3Target("no-such-bucket", "k", endpoint_url=endpoint))
    assert "\n" not in str(missing.value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AuthenticationError, match="no AWS credentials"):
        anyio.run(upload, S3Target(bucket, "k", endpoint_url=endpoint))
