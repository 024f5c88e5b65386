"""S3 like the other destinations, against moto's S3 server on loopback: ``import DIR --to
s3://bucket/prefix/`` (keys mirror the paths), ``upload a b c`` concurrently with one botocore
client, the ``s3`` extra named when botocore is missing, ``upload DIR`` pointing at ``import``,
and a cancelled upload without a journal aborting its multipart upload (with one: kept)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import KiB, MiB, PartDone, S3Target, UploadConfig, Uploader
from engine.cli import main
from engine.events import Event
from engine.providers.s3 import S3Clients
from tests.functional.cli import AWS_ENV, clean_env, cli, json_records
from tests.integration.conftest import moto_endpoint, s3_bucket, s3_client, s3_env

__all__ = ["moto_endpoint", "s3_bucket", "s3_env"]  # the fixtures, used by name


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "site-a/scan.e57": os.urandom(3000),
        "site-b/scan.e57": os.urandom(2000),
        "site-b/deep/notes.txt": b"any file goes to S3",
        "empty.bin": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    c = s3_client(endpoint)
    listed = c.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_import_a_directory_to_a_prefix(tmp_path: Path, moto_endpoint: str, s3_bucket: str) -> None:
    root = tmp_path / "scans"
    files = _tree(root)
    env = clean_env(tmp_path, **AWS_ENV)
    to = ["--to", f"s3://{s3_bucket}/jobs/7/", "--endpoint-url", moto_endpoint]
    dry = cli("import", str(root), *to, "--dry-run", env=env)
    assert dry.code == 0 and "4 files in 4 uploads" in dry.out, dry.output
    run = cli("import", str(root), *to, "--json", env=env)
    assert run.code == 0, run.output
    assert _objects(moto_endpoint, s3_bucket) == {f"jobs/7/{k}": v for k, v in files.items()}
    result = json_records(run.out)[-1]
    assert {f["key"] for f in result["files"]} == {f"jobs/7/{k}" for k in files}
    assert "site-a/scan.e57: started" in run.err or result["summary"]["ok"] == 4
    again = cli("import", str(root), *to, env=env)  # a rerun finds everything there
    assert again.code == 0 and "already uploaded" in again.err, again.output


def test_upload_many_files_concurrently_with_one_client(
    tmp_path: Path,
    moto_endpoint: str,
    s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = [f"f{i:02}.bin" for i in range(24)]
    for n in names:
        (tmp_path / n).write_bytes(os.urandom(1000))
    made: list[int] = []
    real = S3Target._make_client

    def counting(self: S3Target) -> Any:
        made.append(1)
        return real(self)

    monkeypatch.setattr(S3Target, "_make_client", counting)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    code = main(["upload", *(str(tmp_path / n) for n in names), "--to", f"s3://{s3_bucket}/up/",
                 "--endpoint-url", moto_endpoint, "--files-at-once", "8"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(made) == 1  # one botocore client for the probe and all 24 files
    assert out.startswith(f"uploaded 24 files to s3://{s3_bucket}/up/: ")
    assert set(_objects(moto_endpoint, s3_bucket)) == {f"up/{n}" for n in names}


def test_without_the_s3_extra_and_with_a_directory(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x")
    env = clean_env(tmp_path, **AWS_ENV)
    probe = (
        "import sys; sys.modules['botocore'] = None\n"
        "from engine.cli import main\n"
        f"sys.exit(main(['upload', {str(tmp_path / 'a.bin')!r}, '--to', 's3://b/k']))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert (proc.returncode, proc.stderr) == (
        2,
        "upload-engine: error: S3 needs botocore, which is not installed: "
        "pip install 'upload-engine[s3]'\n",
    )
    run = cli("upload", str(tmp_path), "--to", "s3://b/p/", env=env)
    assert (run.code, run.err) == (
        2,
        f"upload-engine: error: {tmp_path}: is a directory; to upload a directory use "
        f"upload-engine import {tmp_path} --to s3://b/p/\n",
    )


async def _cancel_midway(tmp_path: Path, endpoint: str, bucket: str, journal: Path | None) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MiB))
    target = S3Target(bucket, "big.bin", endpoint_url=endpoint, clients=S3Clients())
    config = UploadConfig(part_size=5 * MiB, concurrency=1, chunk_size=256 * KiB)
    async with anyio.create_task_group() as tg:

        def on_event(event: Event) -> None:
            if isinstance(event, PartDone):  # one part stored, the others to come
                tg.cancel_scope.cancel()

        async with Uploader(config, on_event=on_event, journal=journal) as up:
            tg.start_soon(up.upload, big, target)
            await anyio.sleep(30)


@pytest.mark.anyio
async def test_cancelling_without_a_journal_aborts_the_multipart_upload(
    tmp_path: Path, moto_endpoint: str, s3_bucket: str
) -> None:
    c = s3_client(moto_endpoint)
    await _cancel_midway(tmp_path, moto_endpoint, s3_bucket, journal=None)
    assert c.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    await _cancel_midway(tmp_path, moto_endpoint, s3_bucket, journal=tmp_path / "j.jsonl")
    kept = c.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert [u["Key"] for u in kept] == ["big.bin"]  # with a journal: kept for the rerun
