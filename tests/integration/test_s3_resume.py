"""S3 resume asks the bucket, not only the journal: a journaled object counts as uploaded only
when ``HeadObject`` answers it with the journaled ETag and the file's size.

The issue's cases: the object deleted after the upload, and the same file sent to another
endpoint; and the honest repeat, which sends nothing and says so, unless forced.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from engine import Event, MiB, Phase, UploadConfig, Uploader, UploadResult
from engine.providers.s3 import S3Target

from .conftest import s3_client

PART = 5 * MiB


def _upload(
    path: Path, target: S3Target, journal: Path, *, force: bool = False
) -> tuple[UploadResult, list[str]]:
    events: list[Event] = []

    async def main() -> UploadResult:
        config = UploadConfig(part_size=PART)
        async with Uploader(config, journal=journal, on_event=events.append, force=force) as up:
            return await up.upload(path, target)

    result = anyio.run(main)
    return result, [e.message for e in events if isinstance(e, Phase)]


def _bucket(endpoint: str) -> str:
    name = f"resume-{os.urandom(6).hex()}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


@pytest.mark.parametrize("size", [700 * 1024, 2 * PART + 7], ids=["single-put", "multipart"])
def test_a_deleted_object_is_uploaded_again(
    tmp_path: Path, moto_endpoint: str, s3_env: None, size: int
) -> None:
    bucket = _bucket(moto_endpoint)
    data = os.urandom(size)
    (tmp_path / "scan.e57").write_bytes(data)
    journal = tmp_path / "journal.jsonl"

    def target() -> S3Target:
        return S3Target(bucket, "k/scan.e57", endpoint_url=moto_endpoint)

    first, _ = _upload(tmp_path / "scan.e57", target(), journal)
    assert first.bytes_sent == size
    s3_client(moto_endpoint).delete_object(Bucket=bucket, Key="k/scan.e57")
    again, said = _upload(tmp_path / "scan.e57", target(), journal)
    assert again.skipped is None and again.bytes_sent == size
    assert any(
        m.startswith("the journal says it was uploaded, but s3://") and "is not there" in m
        for m in said
    )
    got = s3_client(moto_endpoint).get_object(Bucket=bucket, Key="k/scan.e57")
    assert got["Body"].read() == data


def test_an_object_replaced_by_other_bytes_is_uploaded_again(
    tmp_path: Path, moto_endpoint: str, s3_env: None
) -> None:
    bucket = _bucket(moto_endpoint)
    data = os.urandom(300 * 1024)
    (tmp_path / "a.ifc").write_bytes(data)
    journal = tmp_path / "journal.jsonl"
    _upload(tmp_path / "a.ifc", S3Target(bucket, "a.ifc", endpoint_url=moto_endpoint), journal)
    s3_client(moto_endpoint).put_object(Bucket=bucket, Key="a.ifc", Body=b"someone else's")
    again, said = _upload(
        tmp_path / "a.ifc", S3Target(bucket, "a.ifc", endpoint_url=moto_endpoint), journal
    )
    assert again.bytes_sent == len(data)
    assert any("holds another object" in m for m in said)
    got = s3_client(moto_endpoint).get_object(Bucket=bucket, Key="a.ifc")
    assert got["Body"].read() == data


def test_another_endpoint_gets_the_file(
    tmp_path: Path, moto_endpoint: str, moto_endpoint_b: str, s3_env: None
) -> None:
    bucket = _bucket(moto_endpoint)
    s3_client(moto_endpoint_b).create_bucket(Bucket=bucket)  # the same bucket name, empty
    data = os.urandom(2 * PART + 1)
    (tmp_path / "b.e57").write_bytes(data)
    journal = tmp_path / "journal.jsonl"
    _upload(tmp_path / "b.e57", S3Target(bucket, "b.e57", endpoint_url=moto_endpoint), journal)
    other, _ = _upload(
        tmp_path / "b.e57", S3Target(bucket, "b.e57", endpoint_url=moto_endpoint_b), journal
    )
    assert other.skipped is None and other.bytes_sent == len(data)
    got = s3_client(moto_endpoint_b).get_object(Bucket=bucket, Key="b.e57")
    assert got["Body"].read() == data


def test_a_repeat_sends_nothing_and_force_sends_it_again(
    tmp_path: Path, moto_endpoint: str, s3_env: None
) -> None:
    bucket = _bucket(moto_endpoint)
    data = os.urandom(2 * PART + 3)
    (tmp_path / "c.e57").write_bytes(data)
    journal = tmp_path / "journal.jsonl"

    def target() -> S3Target:
        return S3Target(bucket, "c.e57", endpoint_url=moto_endpoint)

    first, _ = _upload(tmp_path / "c.e57", target(), journal)
    again, _ = _upload(tmp_path / "c.e57", target(), journal)
    assert again.skipped is not None and again.skipped.reason == "already uploaded"
    assert again.bytes_sent == 0 and again.seconds == 0 and again.throughput == 0
    assert again.remote == first.remote
    forced, said = _upload(tmp_path / "c.e57", target(), journal, force=True)
    assert forced.skipped is None and forced.bytes_sent == len(data)
    assert forced.remote.upload_id != first.remote.upload_id  # type: ignore[attr-defined]
    assert "uploaded before: uploading it again, as forced" in said


def test_the_command_line_says_already_uploaded_for_s3(
    tmp_path: Path,
    moto_endpoint: str,
    s3_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from engine.cli import main

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    bucket = _bucket(moto_endpoint)
    (tmp_path / "d.ifc").write_bytes(os.urandom(200 * 1024))
    argv = ["upload", str(tmp_path / "d.ifc"), "--to", f"s3://{bucket}/k/d.ifc"]
    argv += ["--endpoint-url", moto_endpoint, "--state-dir", str(tmp_path / "state")]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"already uploaded: s3://{bucket}/k/d.ifc on ")
    assert line.endswith(" UTC; --force to upload again")
