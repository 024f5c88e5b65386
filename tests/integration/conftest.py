"""An S3-compatible server for the integration tests: moto's server mode in a subprocess.

One server per test session, on a free loopback port; each test that needs storage gets its own
bucket (``s3_bucket``) and fake AWS credentials in the environment (``s3_env``). moto keeps
objects in memory and, unlike MinIO or AWS, checks neither SigV4 signatures nor URL expiry.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_START_TIMEOUT = 30.0  # seconds for moto to import and bind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    for _ in range(3):  # the port picked may be taken before moto binds it: try another
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)
                continue
            return proc, f"http://127.0.0.1:{port}"
        proc.kill()
        proc.wait()
    raise RuntimeError("moto's S3 server did not start")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto S3 server running for the whole test session."""
    proc, url = _start_moto()
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials for moto, and no shared AWS files that could override them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def s3_client(endpoint: str) -> Any:
    """A plain botocore S3 client on ``endpoint`` (for checking what the sandbox stored)."""
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=endpoint
    )


@pytest.fixture
def s3_bucket(moto_endpoint: str, s3_env: None) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"scans-{uuid.uuid4().hex[:12]}"
    client = s3_client(moto_endpoint)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=name)
    return name
