"""The S3 flow over HTTPS with a certificate authority of the test's own (``private_ca``).

moto's server speaks TLS with a server certificate only that CA signed, so every call (botocore's
and the engine's data PUTs) succeeds only when the CA is trusted the standard way: an explicit
``UploadConfig.ca_bundle`` (``--ca-bundle``), ``AWS_CA_BUNDLE`` or the profile's ``ca_bundle``
for S3, ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` for the data path and GraphQL. The machine's own
trust store (which does not hold the CA) stands in for "not given".
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from engine import (
    MiB,
    PartLimits,
    PartRejectedError,
    PresignedMultipart,
    ServiceError,
    UploadConfig,
    Uploader,
)
from engine.clock import FakeClock
from engine.providers.matterport import Matterport, MatterportCredentials
from engine.providers.s3 import S3Target
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.matterport import MatterportSandboxConfig
from engine.sandbox.server import Sandbox, SandboxConfig

from .conftest import PrivateCA, s3_client

SYSTEM_CAS = ssl.get_default_verify_paths().openssl_cafile  # trusts the world, not our CA
PART = 5 * MiB


@pytest.fixture
def https(moto_https_endpoint: str, private_ca: PrivateCA, s3_env: None) -> str:
    return moto_https_endpoint


@pytest.fixture
def tls_bucket(https: str, private_ca: PrivateCA) -> str:
    name = f"tls-{os.urandom(6).hex()}"
    s3_client(https, verify=str(private_ca.ca)).create_bucket(Bucket=name)
    return name


@pytest.fixture
def untrusted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every standard variable points at a trust store without the test's CA."""
    for name in ("AWS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, SYSTEM_CAS)
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-ca-dir"))


def _upload(path: Path, target: S3Target, **config: object) -> object:
    async def main() -> object:
        async with Uploader(UploadConfig(part_size=PART, **config)) as up:  # type: ignore[arg-type]
            return await up.upload(path, target)

    return anyio.run(main)


def _arrived(https: str, private_ca: PrivateCA, bucket: str, key: str, data: bytes) -> None:
    got = s3_client(https, verify=str(private_ca.ca)).get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == data


@pytest.mark.usefixtures("untrusted")
def test_without_the_ca_the_endpoint_is_refused_in_one_line(
    tmp_path: Path, https: str, tls_bucket: str
) -> None:
    src = tmp_path / "a.e57"
    src.write_bytes(os.urandom(1000))
    with pytest.raises(ServiceError) as failed:
        _upload(src, S3Target(tls_bucket, "a.e57", endpoint_url=https))
    assert "TLS certificate is not trusted" in str(failed.value)
    assert "AWS_CA_BUNDLE" in str(failed.value)


@pytest.mark.parametrize("size", [700 * 1024, 2 * PART + 123], ids=["single-put", "multipart"])
def test_aws_ca_bundle_is_trusted_by_botocore_and_by_the_data_path(
    tmp_path: Path,
    https: str,
    tls_bucket: str,
    private_ca: PrivateCA,
    monkeypatch: pytest.MonkeyPatch,
    untrusted: None,
    size: int,
) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(private_ca.ca))  # SSL_CERT_FILE still says no
    data = os.urandom(size)
    (tmp_path / "scan.e57").write_bytes(data)
    _upload(tmp_path / "scan.e57", S3Target(tls_bucket, "in/scan.e57", endpoint_url=https))
    _arrived(https, private_ca, tls_bucket, "in/scan.e57", data)


def test_the_profiles_ca_bundle_is_trusted(
    tmp_path: Path,
    https: str,
    tls_bucket: str,
    private_ca: PrivateCA,
    monkeypatch: pytest.MonkeyPatch,
    untrusted: None,
) -> None:
    config = tmp_path / "aws-config"
    config.write_text(
        "[profile tls]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
        f"ca_bundle = {private_ca.ca}\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_CA_BUNDLE")
    data = os.urandom(2 * PART + 5)
    (tmp_path / "p.e57").write_bytes(data)
    target = S3Target(tls_bucket, "p.e57", endpoint_url=https, profile="tls")
    _upload(tmp_path / "p.e57", target)
    _arrived(https, private_ca, tls_bucket, "p.e57", data)


@pytest.mark.usefixtures("untrusted")
@pytest.mark.parametrize("data_loops", [1, 2])  # the caller's loop, or two in threads
def test_an_explicit_ca_bundle_wins_over_every_variable(
    tmp_path: Path, https: str, tls_bucket: str, private_ca: PrivateCA, data_loops: int
) -> None:
    data = os.urandom(3 * PART + 99)
    (tmp_path / "x.e57").write_bytes(data)
    target = S3Target(tls_bucket, "x.e57", endpoint_url=https)
    _upload(tmp_path / "x.e57", target, ca_bundle=str(private_ca.ca), data_loops=data_loops)
    _arrived(https, private_ca, tls_bucket, "x.e57", data)


def _presigned_put(https: str, private_ca: PrivateCA, bucket: str, key: str) -> str:
    client = s3_client(https, verify=str(private_ca.ca))
    url: str = client.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=600
    )
    return url


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_the_data_path_honours_ssl_cert_file_and_dir(
    tmp_path: Path,
    https: str,
    tls_bucket: str,
    private_ca: PrivateCA,
    monkeypatch: pytest.MonkeyPatch,
    untrusted: None,
    variable: str,
) -> None:
    data = os.urandom(300 * 1024)
    (tmp_path / "d.ifc").write_bytes(data)
    url = _presigned_put(https, private_ca, tls_bucket, "d.ifc")
    target = PresignedMultipart(lambda n: url, lambda parts: None, limits=PartLimits(single=True))

    async def send() -> None:
        async with Uploader(UploadConfig(max_attempts=1), clock=FakeClock()) as up:
            await up.upload(tmp_path / "d.ifc", target)

    with pytest.raises(PartRejectedError, match=r"TLS certificate of 127\.0\.0\.1 is not trusted"):
        anyio.run(send)  # not trusted yet: refused at once, with what to do
    monkeypatch.setenv(
        variable, str(private_ca.ca if variable == "SSL_CERT_FILE" else private_ca.directory)
    )
    anyio.run(send)
    _arrived(https, private_ca, tls_bucket, "d.ifc", data)


@asynccontextmanager
async def tls_proxy(backend: str, private_ca: PrivateCA) -> AsyncIterator[str]:
    """``https://127.0.0.1:PORT``: TLS with the CA's server certificate, terminated here and
    passed on, byte for byte, to the plain-HTTP ``backend``."""
    host, port = backend.removeprefix("http://").split(":")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(private_ca.cert, private_ca.key)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipe, reader, up_writer)
            tg.start_soon(pipe, up_reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.anyio
async def test_graphql_honours_ssl_cert_file(
    tmp_path: Path, private_ca: PrivateCA, monkeypatch: pytest.MonkeyPatch, untrusted: None
) -> None:
    path = tmp_path / "scan.e57"
    write_sample_e57(path, 64 * 1024, seed=3)
    config = SandboxConfig(
        min_part_size=0, matterport=MatterportSandboxConfig(min_part_size=0, model_delay=0.02)
    )
    async with Sandbox(config) as sb, tls_proxy(sb.url, private_ca) as proxy:
        mp = sb.config.matterport
        client = Matterport(
            MatterportCredentials(*mp.credentials[0]),
            endpoint=f"{proxy}/api/import/graph",
            poll_interval=0.01,
        )
        organization = sorted(mp.organizations)[0]
        async with Uploader(UploadConfig(max_attempts=1), clock=FakeClock()) as up:
            with pytest.raises(ServiceError, match="cannot reach"):
                await client.import_files(up, [path], organization=organization)
        monkeypatch.setenv("SSL_CERT_FILE", str(private_ca.ca))
        async with Uploader(UploadConfig(), clock=FakeClock()) as up:
            result = await client.import_files(up, [path], organization=organization)
        assert result.model_id


@pytest.mark.usefixtures("untrusted")
def test_the_command_line_takes_ca_bundle_for_s3(
    tmp_path: Path,
    https: str,
    tls_bucket: str,
    private_ca: PrivateCA,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from engine.cli import main

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    data = os.urandom(PART + 3)
    (tmp_path / "c.e57").write_bytes(data)
    argv = ["upload", str(tmp_path / "c.e57"), "--to", f"s3://{tls_bucket}/c.e57"]
    argv += ["--endpoint-url", https, "--state-dir", str(tmp_path / "state")]
    assert main([*argv, "--ca-bundle", str(tmp_path / "missing.pem")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"upload-engine: error: CA bundle {tmp_path / 'missing.pem'}: no such file"
    assert main([*argv, "--ca-bundle", str(private_ca.ca)]) == 0
    _arrived(https, private_ca, tls_bucket, "c.e57", data)
