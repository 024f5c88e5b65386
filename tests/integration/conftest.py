"""An S3-compatible server for the integration tests: moto's server mode in a subprocess.

One server per test session, on a free loopback port; each test that needs storage gets its own
bucket (``s3_bucket``) and fake AWS credentials in the environment (``s3_env``). moto keeps
objects in memory and, unlike MinIO or AWS, checks neither SigV4 signatures nor URL expiry.

``private_ca`` generates a certificate authority of the test session (``cryptography``) and a
server certificate it signed for ``127.0.0.1`` and ``localhost``; ``moto_https_endpoint`` is a
second moto server that speaks only TLS with that certificate (moto's own ``--ssl-cert`` /
``--ssl-key``), so a client trusts it only through the CA it is given.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_START_TIMEOUT = 30.0  # seconds for moto to import and bind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_moto(tls: tuple[Path, Path] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    scheme = "https" if tls else "http"
    extra = ["-c", str(tls[0]), "-k", str(tls[1])] if tls else []
    for _ in range(3):  # the port picked may be taken before moto binds it: try another
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port), *extra],
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
            return proc, f"{scheme}://127.0.0.1:{port}"
        proc.kill()
        proc.wait()
    raise RuntimeError("moto's S3 server did not start")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto S3 server running for the whole test session."""
    proc, url = _start_moto()
    try:
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def moto_endpoint_b() -> Iterator[str]:
    """A second, independent moto S3 server: another endpoint, with nothing of the first's."""
    proc, url = _start_moto()
    try:
        yield url
    finally:
        _stop(proc)


@dataclass(frozen=True)
class PrivateCA:
    """A certificate authority made for the test session, and a server certificate it signed."""

    ca: Path  # the CA's certificate (PEM): what a client is told to trust
    cert: Path  # the server's certificate (PEM), for 127.0.0.1 and localhost
    key: Path  # the server's private key (PEM)
    directory: Path  # an OpenSSL CA directory (``c_rehash`` layout) holding only the CA


def _name(common: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_ca(where: Path) -> PrivateCA:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("upload-engine test CA"))
        .issuer_name(_name("upload-engine test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    out = PrivateCA(where / "ca.pem", where / "server.pem", where / "server.key", where / "ca-dir")
    out.ca.write_bytes(ca.public_bytes(pem))
    out.cert.write_bytes(cert.public_bytes(pem))
    out.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    out.directory.mkdir()
    (out.directory / "test-ca.pem").write_bytes(ca.public_bytes(pem))
    subprocess.run(["openssl", "rehash", str(out.directory)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    """A CA of this test session and a loopback server certificate it signed."""
    return _write_ca(tmp_path_factory.mktemp("private-ca"))


@pytest.fixture(scope="session")
def moto_https_endpoint(private_ca: PrivateCA) -> Iterator[str]:
    """``https://127.0.0.1:PORT`` of a moto S3 server that speaks TLS with ``private_ca``'s
    server certificate only."""
    proc, url = _start_moto((private_ca.cert, private_ca.key))
    try:
        yield url
    finally:
        _stop(proc)


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


def s3_client(endpoint: str, verify: str | bool | None = None) -> Any:
    """A plain botocore S3 client on ``endpoint`` (for checking what the sandbox stored);
    ``verify``: botocore's (a CA bundle for an HTTPS endpoint)."""
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=endpoint, verify=verify
    )


@pytest.fixture
def s3_bucket(moto_endpoint: str, s3_env: None) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"scans-{uuid.uuid4().hex[:12]}"
    client = s3_client(moto_endpoint)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=name)
    return name
