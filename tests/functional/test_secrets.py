"""Secrets stay secret: known tokens and every presigned URL signature, through uploads and
failures, never appear in stdout, stderr, logs (DEBUG, aiohttp's loggers included), the
``--report`` JSON or the journal; credentials never come from argv; switching TLS checks off is
explicit and warned about; the sandbox refuses path traversal and unauthenticated requests.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from engine import KiB
from engine.cli import main
from engine.sandbox.blobstore import BlobError
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.faults import FaultPlan
from engine.sandbox.ifc import write_sample_ifc
from engine.sandbox.matterport import MatterportSandboxConfig
from engine.sandbox.server import Sandbox, SandboxConfig
from engine.sandbox.speckle import SpeckleSandboxConfig
from tests.functional.servers import served_sandbox

TOKEN_ID = "mp-id-K7Q2V"
TOKEN_SECRET = "mp-secret-Z9X4WqLr"
SPECKLE_TOKEN = "spk-token-R3T5Y8pA1c"
PLANES: dict[str, Any] = {
    "matterport": MatterportSandboxConfig(
        credentials=((TOKEN_ID, TOKEN_SECRET),), min_part_size=64 * KiB, model_delay=0.0
    ),
    "speckle": SpeckleSandboxConfig(
        tokens={SPECKLE_TOKEN: {"sandbox-project"}}, step_delay=0.0, retry_after=0.01
    ),
}
LOGGERS = ("", "aiohttp", "aiohttp.client", "aiohttp.server", "aiohttp.access", "aiohttp.web",
           "asyncio", "engine", "botocore", "urllib3")  # fmt: skip


class Leaks:
    """The secrets a run must not show, and every place to look for them."""

    def __init__(self) -> None:
        basic = base64.b64encode(f"{TOKEN_ID}:{TOKEN_SECRET}".encode()).decode()
        self.secrets = {TOKEN_SECRET, SPECKLE_TOKEN, basic, f"{TOKEN_ID}:{TOKEN_SECRET}"}
        self.urls: list[str] = []

    def watch(self, sb: Sandbox) -> None:
        """Record every URL the sandbox presigns (their signatures are secrets too)."""
        store = sb.store
        for name in ("presign_part", "presign_put"):
            real: Callable[..., str] = getattr(store, name)

            def recording(*args: Any, _real: Callable[..., str] = real, **kw: Any) -> str:
                url = _real(*args, **kw)
                self.urls.append(url)
                return url

            setattr(store, name, recording)

    def signatures(self) -> set[str]:
        out = set()
        for url in self.urls:
            query = parse_qs(urlsplit(url).query)
            out.update(query.get("X-Signature", []))
        return out

    def check(self, where: str, text: str) -> None:
        for secret in self.secrets | self.signatures():
            assert secret not in text, f"a secret leaked into {where}"
        assert not re.search(r"X-Signature=(?!\[redacted\])", text), f"a signature in {where}"
        for url in self.urls:
            assert url.split("?", 1)[1] not in text, f"a presigned query string in {where}"


@pytest.fixture
def leaks(caplog: pytest.LogCaptureFixture) -> Iterator[Leaks]:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name or None)
    found = Leaks()
    yield found
    assert found.urls, "no URL was presigned: the runs did not reach the blob store"
    found.check("the log", caplog.text)
    for record in caplog.records:
        found.check(f"log record {record.name}", f"{record.getMessage()} {record.args!r}")


def files_under(root: Path) -> Iterator[tuple[Path, str]]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "sandbox" not in path.parts:
            yield path, path.read_text(errors="replace")


def write_sample_ifc_at(path: Path) -> Path:
    write_sample_ifc(path, 80 * KiB, seed=9)
    return path


def run(capsys: pytest.CaptureFixture[str], leaks: Leaks, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    leaks.check("stdout", out)
    leaks.check("stderr", err)
    assert "Traceback" not in out + err
    return code, out, err


def test_uploads_and_failures_leak_no_token_and_no_signature(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    leaks: Leaks,
) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    write_sample_e57(scans / "room.e57", 300 * KiB, seed=1)
    write_sample_e57(scans / "hall.e57", 200 * KiB, seed=2)
    write_sample_ifc(scans / "tower.ifc", 150 * KiB, seed=3)
    fresh = write_sample_ifc_at(tmp_path / "fresh.ifc")
    state = tmp_path / "state"
    report = tmp_path / "report.json"
    monkeypatch.setenv("MATTERPORT_TOKEN_ID", TOKEN_ID)
    monkeypatch.setenv("MATTERPORT_TOKEN_SECRET", TOKEN_SECRET)
    monkeypatch.setenv("SPECKLE_TOKEN", SPECKLE_TOKEN)
    faults = FaultPlan(
        seed=4, rates={"expired": 0.2, "reset": 0.1, "503": 0.1, "bad_etag": 0.1}, retry_after=0.01
    )
    outcomes: list[int] = []
    with served_sandbox(faults=faults, **PLANES) as sb:
        leaks.watch(sb)
        mp = ["--endpoint", f"{sb.url}/api/import/graph", "--organization", "sandbox-org"]
        sp = ["--server", sb.url, "--project", "sandbox-project"]
        common = ["--part-size", "64KiB", "--state-dir", str(state)]
        # uploads that work, through faults that get logged
        for extra in ([], ["--json"]):
            code, _, _ = run(
                capsys, leaks, "upload", str(scans / "room.e57"), "--to", "matterport", *mp,
                *common, *extra,
            )  # fmt: skip
            outcomes.append(code)
            code, _, _ = run(
                capsys, leaks, "upload", str(scans / "tower.ifc"), "--to", "speckle", *sp,
                *common, *extra,
            )  # fmt: skip
            outcomes.append(code)
        for to, flags in (("matterport", mp), ("speckle", sp)):
            code, _, _ = run(
                capsys, leaks, "import", str(scans), "--to", to, *flags, "--report", str(report),
                "--part-size", "64KiB",
            )  # fmt: skip
            outcomes.append(code)
            leaks.check("the report", report.read_text())
        assert outcomes == [0] * len(outcomes)

        # failures: refused tokens, and a permanent storage fault
        monkeypatch.setenv("MATTERPORT_TOKEN_SECRET", TOKEN_SECRET[::-1])
        code, _, err = run(
            capsys, leaks, "upload", str(scans / "hall.e57"), "--to", "matterport", *mp, *common
        )
        assert code == 3 and "refused the credentials" in err  # 3: authentication
        monkeypatch.setenv("MATTERPORT_TOKEN_SECRET", TOKEN_SECRET)
        monkeypatch.setenv("SPECKLE_TOKEN", SPECKLE_TOKEN + "x")
        code, _, err = run(capsys, leaks, "upload", str(fresh), "--to", "speckle", *sp, *common)
        assert code == 3 and "SPECKLE_TOKEN is not valid" in err
        monkeypatch.setenv("SPECKLE_TOKEN", SPECKLE_TOKEN)
        sb.store.faults = FaultPlan(rates={"expired": 1.0}, max_faulty_attempts=99)
        code, _, err = run(
            capsys, leaks, "upload", str(scans / "hall.e57"), "--to", "matterport", *mp, *common,
            "--max-attempts", "2",
        )  # fmt: skip
        assert code == 1 and "Request has expired" in err
        assert sb.store.stats()["faults"]  # the storage faults really happened

    journals = list(files_under(state)) + list(files_under(scans / ".upload-engine"))
    assert journals, "no journal was written"
    for path, text in journals:
        leaks.check(str(path), text)
    assert len(leaks.signatures()) >= 10


def test_credentials_never_come_from_argv(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("upload", "import"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out.lower()
        assert "--token" not in text and "--secret" not in text and "--password" not in text


def test_tls_verification_is_on_by_default_and_off_only_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli import build_parser
    from engine.cli.options import engine_config
    from engine.config import UploadConfig

    assert UploadConfig().verify_tls
    path = tmp_path / "scan.e57"
    write_sample_e57(path, 64 * KiB, seed=1)
    args = build_parser().parse_args(["upload", str(path), "--to", "sandbox-matterport"])
    assert engine_config(args).verify_tls
    insecure = build_parser().parse_args(
        ["upload", str(path), "--to", "sandbox-matterport", "--insecure"]
    )
    assert not engine_config(insecure).verify_tls

    assert main(["upload", str(path), "--to", "sandbox-matterport"]) == 0
    assert "TLS" not in capsys.readouterr().err
    assert main(["upload", str(path), "--to", "sandbox-matterport", "--insecure"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "warning: TLS certificate verification is OFF (--insecure)"


# ---- the sandbox refuses traversal and strangers -------------------------------------------------


async def raw(url: str, request: str, body: bytes = b"") -> tuple[int, str]:
    """Send ``request`` (request line and headers) exactly as written: no client normalises
    the path."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request.encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload.decode(errors="replace")


@pytest.mark.anyio
async def test_the_sandbox_refuses_path_traversal_and_unauthenticated_requests(
    tmp_path: Path,
) -> None:
    async with Sandbox(SandboxConfig(data_dir=tmp_path / "data", **PLANES)) as sb:
        store = sb.store
        for key in ("../outside", "a/../../outside", "/etc/passwd", "a\\..\\b"):
            with pytest.raises(BlobError) as refused:
                store.presign_put(key)
            assert refused.value.code == "InvalidKey"
        good = store.presign_put("speckle/p/file")
        signed_query = urlsplit(good).query
        for path in ("/blob/..%2F..%2Fetc%2Fpasswd", "/blob/speckle/%2e%2e/%2e%2e/x"):
            status, text = await raw(
                sb.url,
                f"PUT {path}?{signed_query} HTTP/1.1\r\nHost: x\r\nContent-Length: 3",
                b"abc",
            )
            assert (status, "<Code>InvalidKey</Code>" in text) == (400, True)
        status, text = await raw(
            sb.url, "GET /_sandbox/objects/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: x"
        )
        assert status == 400 and "InvalidKey" in text
        assert not any((tmp_path / "data" / "objects").iterdir())

        async with aiohttp.ClientSession() as http:
            # a blob PUT without a signature, with a forged one, or to another key
            unsigned = good.split("?", 1)[0]
            forged = re.sub(r"X-Signature=[0-9a-f]+", "X-Signature=" + "0" * 64, good)
            moved = good.replace("/speckle/p/file?", "/speckle/p/other?")
            for url in (unsigned, forged, moved):
                async with http.put(url, data=b"abc") as resp:
                    assert resp.status == 403
                    assert "<Code>SignatureDoesNotMatch</Code>" in await resp.text()
            assert store.head("speckle/p/file") is None and store.head("speckle/p/other") is None
            # both control planes, without or with wrong credentials
            query = {"query": "{ __typename }"}
            wrong = base64.b64encode(f"{TOKEN_ID}:nope".encode()).decode()
            for headers in ({}, {"Authorization": f"Basic {wrong}"}):
                async with http.post(
                    f"{sb.url}/api/import/graph", json=query, headers=headers
                ) as r:
                    assert r.status == 401
                    body = await r.json()
                    assert body["errors"][0]["extensions"]["code"] == "request.unauthenticated"
            bad = {"Authorization": "Bearer not-a-token"}
            async with http.post(f"{sb.url}/graphql", json=query, headers=bad) as r:
                assert (r.status, await r.json()) == (403, {"error": "Your token is not valid."})
            # Without a token Speckle takes an anonymous caller (speckle-server
            # shared/middleware createAuthContextFromToken): it may read, never write.
            upload = {
                "query": "mutation { fileUploadMutations { generateUploadUrl(input: "
                '{projectId: "sandbox-project", fileName: "x.ifc"}) { url fileId } } }'
            }
            async with http.post(f"{sb.url}/graphql", json=upload) as r:
                body = await r.json()
            assert body["errors"][0]["extensions"]["code"] == "UNAUTHORIZED", body
            assert "X-Signature" not in str(body)


# ---- the credentials file ------------------------------------------------------------------------


def test_tokens_from_a_0600_credentials_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    leaks: Leaks,
) -> None:
    for name in ("MATTERPORT_TOKEN_ID", "MATTERPORT_TOKEN_SECRET", "SPECKLE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("UPLOAD_ENGINE_CREDENTIALS_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    creds = tmp_path / "config" / "upload-engine" / "credentials"
    creds.parent.mkdir(parents=True)
    creds.write_text(
        "# upload-engine credentials\n"
        f"MATTERPORT_TOKEN_ID={TOKEN_ID}\n"
        f"export MATTERPORT_TOKEN_SECRET='{TOKEN_SECRET}'\n"
        f'SPECKLE_TOKEN="{SPECKLE_TOKEN}"\n'
    )
    creds.chmod(0o600)
    scan, model = tmp_path / "scan.e57", tmp_path / "tower.ifc"
    write_sample_e57(scan, 64 * KiB, seed=1)
    write_sample_ifc(model, 64 * KiB, seed=1)
    state = ["--state-dir", str(tmp_path / "state")]
    with served_sandbox(**PLANES) as sb:
        leaks.watch(sb)
        mp = ["--endpoint", f"{sb.url}/api/import/graph", "--organization", "sandbox-org"]
        assert run(capsys, leaks, "upload", str(scan), "--to", "matterport", *mp, *state)[0] == 0
        sp = ["--server", sb.url, "--project", "sandbox-project", *state]
        assert run(capsys, leaks, "upload", str(model), "--to", "speckle", *sp)[0] == 0

        # The environment wins over the file.
        monkeypatch.setenv("SPECKLE_TOKEN", "not-the-token")
        write_sample_ifc(model, 64 * KiB, seed=2)
        code, _, err = run(capsys, leaks, "upload", str(model), "--to", "speckle", *sp)
        assert code == 3 and "SPECKLE_TOKEN is not valid" in err
        monkeypatch.delenv("SPECKLE_TOKEN")

        # Open to others: refused before anything is sent, and nothing of it is shown.
        creds.chmod(0o644)
        code, _, err = run(capsys, leaks, "upload", str(model), "--to", "speckle", *sp)
        assert code == 2
        assert err == (
            f"upload-engine: error: credentials file {creds} is open to group or others "
            f"(mode 0644): run chmod 600 {creds}\n"
        )
        creds.chmod(0o600)
        creds.write_text(f"SPECKLE-TOKEN: {SPECKLE_TOKEN}\n")
        code, _, err = run(capsys, leaks, "upload", str(model), "--to", "speckle", *sp)
        assert code == 2 and f"credentials file {creds}, line 1: expected KEY=VALUE" in err

        monkeypatch.setenv("UPLOAD_ENGINE_CREDENTIALS_FILE", str(tmp_path / "missing"))
        code, _, err = run(capsys, leaks, "upload", str(model), "--to", "speckle", *sp)
        assert code == 2
        assert err == (
            f"upload-engine: error: UPLOAD_ENGINE_CREDENTIALS_FILE: {tmp_path / 'missing'}: "
            "no such file\n"
        )
