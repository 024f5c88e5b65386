"""Bad input through the command line: one actionable line on stderr, the right exit code.

Every case runs ``engine.cli.main([...])`` in-process and checks that stderr ends with exactly one
``upload-engine: ...`` line saying what is wrong, that nothing prints a traceback, and the exit
code: 2 for a usage error or bad input found before anything is sent, 3 for credentials that
are missing or refused (or without access), 1 for an upload that failed remotely. Where a run
leaves state (a journal), a rerun with the input fixed succeeds.

Servers the CLI talks to run in background threads with their own event loops (the CLI runs
its own loop in the test's thread): a real sandbox for the platforms' refusals, and a tiny
aiohttp server answering malformed responses.
"""

from __future__ import annotations

import io
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from engine import KiB, MiB
from engine.cli import main
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.faults import FaultPlan
from engine.sandbox.ifc import write_sample_ifc
from engine.sandbox.matterport import MatterportSandboxConfig
from tests.functional.servers import served_app, served_sandbox

EXIT_FAILED, EXIT_USAGE, EXIT_AUTH = 1, 2, 3
TOKEN_ID, TOKEN_SECRET = "sandbox-token-id", "sandbox-token-secret"
SPECKLE_TOKEN = "sandbox-token"

# ---- helpers -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MATTERPORT_TOKEN_ID", "MATTERPORT_TOKEN_SECRET", "SPECKLE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("UPLOAD_ENGINE_CREDENTIALS_FILE", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out, err


def the_error(err: str, *, alone: bool = True) -> str:
    """The one ``upload-engine:`` line of stderr (its last line); ``alone``: nothing else."""
    lines = err.strip().splitlines()
    assert lines, "nothing on stderr"
    errors = [line for line in lines if line.startswith("upload-engine:")]
    assert errors == [lines[-1]], err
    if alone:
        assert len(lines) == 1, err
    return lines[-1]


def e57(path: Path, size: int = 64 * KiB, seed: int = 1) -> Path:
    write_sample_e57(path, size, seed=seed)
    return path


def ifc(path: Path, size: int = 64 * KiB, seed: int = 1) -> Path:
    write_sample_ifc(path, size, seed=seed)
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: connections are refused


def matterport_env(monkeypatch: pytest.MonkeyPatch, secret: str = TOKEN_SECRET) -> None:
    monkeypatch.setenv("MATTERPORT_TOKEN_ID", TOKEN_ID)
    monkeypatch.setenv("MATTERPORT_TOKEN_SECRET", secret)


# ---- refused before anything is sent: exit 2 -----------------------------------------------------


def test_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "upload", str(tmp_path / "nope.e57"), "--to", "sandbox-matterport")
    assert code == EXIT_USAGE
    assert the_error(err) == f"upload-engine: error: {tmp_path / 'nope.e57'}: no such file"
    code, _, err = run(capsys, "import", str(tmp_path / "nope"), "--to", "sandbox")
    assert code == EXIT_USAGE
    assert the_error(err) == f"upload-engine: error: {tmp_path / 'nope'}: not a directory"


def test_directory_without_scans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("no scans here")
    (tmp_path / "sub").mkdir()
    code, _, err = run(capsys, "import", str(tmp_path), "--to", "sandbox")
    assert code == EXIT_USAGE
    assert the_error(err) == (
        f"upload-engine: error: {tmp_path}: no E57 or IFC files to upload for --to sandbox"
    )
    code, _, err = run(capsys, "upload", str(tmp_path / "sub"), "--to", "sandbox-speckle")
    assert code == EXIT_USAGE
    assert the_error(err) == (
        f"upload-engine: error: {tmp_path / 'sub'}: is a directory; to upload a directory use "
        f"upload-engine import {tmp_path / 'sub'} --to sandbox-speckle"
    )


def test_an_extension_the_server_does_not_import_is_refused_by_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The server decides what it ingests (a .las may be fine elsewhere): the file is sent, and
    # the server's refusal is one line, a format error (exit 2).
    path = tmp_path / "model.las"
    path.write_bytes(b"LASF" * 100)
    code, _, err = run(capsys, "upload", str(path), "--to", "sandbox-speckle")
    assert code == EXIT_USAGE
    assert the_error(err, alone=False) == (
        f"upload-engine: error: {path}: .las: not a format this Speckle server imports: "
        "StartFileIngestion: file type not imported: The provided file type is not supported "
        "for importing. (UNSUPPORTED_FILE_TYPE)"
    )
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("name", "content", "to", "message"),
    [
        ("empty.e57", b"", "sandbox-matterport", "not an E57 file (header does not read ASTM-E57)"),
        (
            "empty.ifc",
            b"",
            "sandbox-speckle",
            "not an IFC file (header does not read ISO-10303-21;)",
        ),
        ("junk.e57", b"PK\x03\x04" * 1000, "sandbox-matterport", "not an E57 file"),
        ("junk.ifc", b"<?xml version='1.0'?>" * 100, "sandbox-speckle", "not an IFC file"),
        ("junk.e57", b"ISO-10303-21;\n" * 100, "sandbox-speckle", "not an E57 file"),
        ("model", b"ISO-10303-21;\n" * 100, "sandbox-speckle", "no extension: not a format"),
    ],
)
def test_empty_wrong_header_or_wrong_extension(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes,
    to: str,
    message: str,
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    code, _, err = run(capsys, "upload", str(path), "--to", to)
    assert code == EXIT_USAGE
    line = the_error(err)
    assert line.startswith(f"upload-engine: error: {path}: ") and message in line


def test_a_file_larger_than_speckle_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.ifc"
    with path.open("wb") as f:  # sparse: 6 GiB on paper, a few bytes on disk
        f.write(b"ISO-10303-21;\n")
        f.truncate(6 * 1024**3)
    code, _, err = run(capsys, "upload", str(path), "--to", "sandbox-speckle")
    assert code == EXIT_USAGE
    assert the_error(err) == (
        f"upload-engine: error: {path}: 6442450944 bytes exceed the 5368709120-byte (5 GiB) "
        "limit of one Speckle upload"
    )


def test_an_unreadable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = e57(tmp_path / "locked.e57")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: refuse like the kernel would for a user
        real_open, real_os_open = io.open, os.open

        def deny(file: Any, *args: Any, **kwargs: Any) -> Any:
            if Path(os.fspath(file)) == path:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(file, *args, **kwargs)

        def deny_os(file: Any, *args: Any, **kwargs: Any) -> Any:
            if Path(os.fspath(file)) == path:
                raise PermissionError(13, "Permission denied", str(path))
            return real_os_open(file, *args, **kwargs)

        monkeypatch.setattr(io, "open", deny)
        monkeypatch.setattr(os, "open", deny_os)
    code, _, err = run(capsys, "upload", str(path), "--to", "sandbox-matterport")
    assert code == EXIT_USAGE
    assert the_error(err) == f"upload-engine: error: {path}: permission denied"


def test_a_symlink_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.e57").symlink_to(tmp_path / "b.e57")
    (tmp_path / "b.e57").symlink_to(tmp_path / "a.e57")
    code, _, err = run(capsys, "upload", str(tmp_path / "a.e57"), "--to", "sandbox-matterport")
    assert code == EXIT_USAGE
    assert the_error(err) == (
        f"upload-engine: error: {tmp_path / 'a.e57'}: cannot read (Too many levels of symbolic "
        "links)"
    )
    # A directory import lists the loop as a file it could not take, and sends the rest; the
    # loop is a local input error, so the run exits 2 (as the same file does from upload).
    e57(tmp_path / "good.e57")
    report = tmp_path / "report.json"
    code, _, err = run(capsys, "import", str(tmp_path), "--to", "sandbox", "--report", str(report))
    assert code == EXIT_USAGE
    files = {Path(f["path"]).name: f for f in orjson.loads(report.read_bytes())["files"]}
    assert files["good.e57"]["status"] == "ok"
    assert {files[n]["status"] for n in ("a.e57", "b.e57")} == {"failed"}
    assert {files[n]["error"] for n in ("a.e57", "b.e57")} == {"symlink loop"}


@pytest.mark.parametrize(
    ("to", "extra", "message"),
    [
        (
            "matterport",
            ["--organization", "org"],
            "no Matterport credentials (MATTERPORT_TOKEN_ID and MATTERPORT_TOKEN_SECRET unset): "
            "set MATTERPORT_TOKEN_ID and MATTERPORT_TOKEN_SECRET",
        ),
        (
            "speckle",
            ["--project", "p"],
            "SPECKLE_TOKEN is not set; create a personal access token with the streams:write "
            "scope (Avatar > Profile > Personal Access Tokens) and export it",
        ),
        ("matterport", [], "--organization is required for --to matterport"),
    ],
)
def test_missing_token_or_argument(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    to: str,
    extra: list[str],
    message: str,
) -> None:
    if not extra:
        matterport_env(monkeypatch)
    path = e57(tmp_path / "scan.e57") if to == "matterport" else ifc(tmp_path / "scan.ifc")
    code, _, err = run(capsys, "upload", str(path), "--to", to, *extra)
    assert code == (EXIT_AUTH if extra else EXIT_USAGE)  # missing credentials: 3
    if extra:  # the credentials file is the other place they may be
        message += f" (or in {tmp_path / 'xdg-config' / 'upload-engine' / 'credentials'}, mode 600)"
    assert the_error(err) == f"upload-engine: error: {message}"


# ---- refused by the platform: exit 3 for credentials and access, else 1 --------------------------


def test_bad_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    scan, model = e57(tmp_path / "scan.e57"), ifc(tmp_path / "tower.ifc")
    with served_sandbox() as sb:
        url = sb.url
        matterport_env(monkeypatch, secret="wrong-secret")
        code, _, err = run(
            capsys, "upload", str(scan), "--to", "matterport", "--organization", "sandbox-org",
            "--endpoint", f"{url}/api/import/graph",
        )  # fmt: skip
        assert code == EXIT_AUTH
        assert the_error(err) == (
            "upload-engine: failed: addImportSession: Matterport refused the credentials: check "
            "MATTERPORT_TOKEN_ID/SECRET (Missing or invalid credentials: send Authorization: "
            "Basic [redacted](tokenId:secret))"
        )
        monkeypatch.setenv("SPECKLE_TOKEN", "not-a-token")
        code, _, err = run(
            capsys, "upload", str(model), "--to", "speckle", "--project", "sandbox-project",
            "--server", url,
        )  # fmt: skip
        assert code == EXIT_AUTH
        assert the_error(err) == (
            "upload-engine: failed: SpeckleServer: SPECKLE_TOKEN is not valid (Your token "
            "is not valid.)"
        )


def test_unknown_organization_project_model_and_quota(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    scan, model = e57(tmp_path / "scan.e57"), ifc(tmp_path / "tower.ifc")
    matterport_env(monkeypatch)
    monkeypatch.setenv("SPECKLE_TOKEN", SPECKLE_TOKEN)
    expected = {
        ("matterport", "--organization", "no-such-org"): (
            "addImportSession: not allowed with this token: This token may not import into "
            "organization 'no-such-org' (request.unauthorized)"
        ),
        ("speckle", "--project", "no-such-project"): (
            "ProjectModelByName: project not found: Project not found (STREAM_NOT_FOUND)"
        ),
        ("speckle", "--model-id", "nosuchmodel"): (
            "ProjectModel: model not found: Model not found (BRANCH_NOT_FOUND)"
        ),
        ("matterport", "--organization", "sandbox-org"): (
            "addImportSession: the account's quota is exceeded: Organization 'sandbox-org' has "
            "used its quota of 0 models (quota.exceeded)"
        ),
    }
    with served_sandbox(matterport=MatterportSandboxConfig(quota=0)) as sb:
        url = sb.url
        for (to, flag, value), message in expected.items():
            if to == "matterport":
                args = [str(scan), "--organization", value, "--endpoint", f"{url}/api/import/graph"]
            else:
                args = [str(model), "--server", url, "--project", "sandbox-project", flag, value]
                if flag == "--project":
                    args = [str(model), "--server", url, flag, value]
            code, _, err = run(capsys, "upload", "--to", to, *args)
            # access refused (the organization) is 3; what the platform lacks or limits, 1
            assert code == (EXIT_AUTH if "not allowed" in message else EXIT_FAILED), err
            assert the_error(err) == f"upload-engine: failed: {message}"


def test_sandbox_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = closed_port()
    matterport_env(monkeypatch)
    started = time.monotonic()
    code, _, err = run(
        capsys, "upload", str(e57(tmp_path / "scan.e57")), "--to", "matterport",
        "--organization", "sandbox-org", "--endpoint", f"http://127.0.0.1:{port}/api/import/graph",
        "--max-attempts", "2",
    )  # fmt: skip
    assert code == EXIT_FAILED
    assert the_error(err) == (
        f"upload-engine: failed: addImportSession: cannot reach http://127.0.0.1:{port}/api/"
        "import/graph: Connection refused (gave up after 2 attempts)"
    )
    monkeypatch.setenv("SPECKLE_TOKEN", SPECKLE_TOKEN)
    code, _, err = run(
        capsys, "upload", str(ifc(tmp_path / "tower.ifc")), "--to", "speckle",
        "--project", "sandbox-project", "--server", f"http://127.0.0.1:{port}",
    )  # fmt: skip
    assert code == EXIT_FAILED
    line = the_error(err)
    assert line.startswith(
        f"upload-engine: failed: ProjectModelByName: cannot reach http://127.0.0.1:{port}/graphql:"
        " Connection refused (gave up after"
    )
    assert time.monotonic() - started < 30


# ---- malformed answers ---------------------------------------------------------------------------

HTML_502 = (
    "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    "<body><h1>Bad Gateway</h1><p>The proxy could not reach the upstream.</p></body></html>"
)
S3_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code><Message>We '
    "encountered an internal error. Please try again.</Message></Error>"
)


def malformed_app() -> web.Application:
    """``/<case>/graph`` answers GraphQL badly; ``/s3/...`` is an S3 endpoint whose PUTs
    answer 200 with an XML ``<Error>`` document."""

    async def graph(request: web.Request) -> web.Response:
        await request.read()
        case = request.match_info["case"]
        if case == "invalid-json":
            return web.Response(
                status=200, text='{"data": {"addImportSession": ', content_type="application/json"
            )
        if case == "missing-fields":
            return web.json_response({"data": {"addImportSession": {"name": "no id here"}}})
        if case == "no-data":
            return web.json_response({"data": None})
        if case == "html-502":
            return web.Response(status=502, text=HTML_502, content_type="text/html")
        if case == "html-200":
            return web.Response(
                status=200,
                text=HTML_502.replace("502 Bad Gateway", "Sign in"),
                content_type="text/html",
            )
        raise web.HTTPNotFound()

    async def s3(request: web.Request) -> web.Response:
        if request.method == "PUT":
            await request.read()
            return web.Response(status=200, text=S3_ERROR, content_type="application/xml")
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/{case}/graph", graph)
    app.router.add_route("*", "/s3/{tail:.*}", s3)
    return app


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "invalid-json",
            "addImportSession: malformed response from {url}/invalid-json/graph: not a GraphQL "
            'JSON object (HTTP 200: {{"data": {{"addImportSession":)',
        ),
        ("missing-fields", "addImportSession: malformed answer from Matterport (no id)"),
        ("no-data", "addImportSession: malformed response from {url}/no-data/graph (no data)"),
        (
            "html-502",
            "addImportSession: HTTP 502: an HTML page: 502 Bad Gateway (gave up after 2 attempts)",
        ),
        (
            "html-200",
            "addImportSession: malformed response from {url}/html-200/graph: not a GraphQL JSON "
            "object (HTTP 200: an HTML page: Sign in)",
        ),
    ],
)
def test_malformed_graphql_answers(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    message: str,
) -> None:
    matterport_env(monkeypatch)
    scan = e57(tmp_path / "scan.e57")
    with served_app(malformed_app()) as url:
        code, _, err = run(
            capsys, "upload", str(scan), "--to", "matterport", "--organization", "org",
            "--endpoint", f"{url}/{case}/graph", "--max-attempts", "2",
        )  # fmt: skip
    assert code == EXIT_FAILED
    assert the_error(err) == "upload-engine: failed: " + message.format(url=url)


def test_a_put_answered_200_with_an_xml_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 100_000)
    with served_app(malformed_app()) as url:
        code, _, err = run(
            capsys, "upload", str(path), "--to", "s3://bucket/blob.bin", "--endpoint-url",
            f"{url}/s3", "--region", "us-east-1", "--max-attempts", "2",
            "--state-dir", str(tmp_path / "state"),
        )  # fmt: skip
    assert code == EXIT_FAILED
    line = the_error(err, alone=False)  # the retry before it is logged
    assert line == (
        "upload-engine: failed: part 1 failed 2 times; last: HTTP 200 with an S3 error document: "
        "InternalError: We encountered an internal error. Please try again."
    )


# ---- the file changes while it uploads -----------------------------------------------------------


@pytest.mark.parametrize("change", ["truncated", "appended"])
def test_a_file_changed_while_uploading_fails_and_a_rerun_uploads_the_new_contents(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    change: str,
) -> None:
    path = e57(tmp_path / "scan.e57", 2 * MiB, seed=5)
    state = tmp_path / "state"
    matterport_env(monkeypatch)
    planes: dict[str, Any] = {
        "faults": FaultPlan(latency=0.15),  # slow PUTs: time to change the file mid-upload
        "matterport": MatterportSandboxConfig(min_part_size=256 * KiB, model_delay=0.0),
    }
    args = [
        "upload", str(path), "--to", "matterport", "--organization", "sandbox-org",
        "--part-size", "256KiB", "--concurrency", "1", "--state-dir", str(state),
        "-v",  # the phases (the import session's id) are -v detail
    ]  # fmt: skip
    with served_sandbox(**planes) as sb:
        url = sb.url
        args += ["--endpoint", f"{url}/api/import/graph"]

        def meddle() -> None:
            time.sleep(0.5)
            with path.open("r+b") as f:
                if change == "truncated":
                    f.truncate(MiB)
                else:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\0" * 4096)

        meddler = threading.Thread(target=meddle)
        meddler.start()
        try:
            code, _, err = run(capsys, *args)
        finally:
            meddler.join()
        assert code == EXIT_FAILED
        line = the_error(err, alone=False)
        assert "changed while uploading" in line or "changed since it was planned" in line, line
        assert "rerun to upload the new contents" in line
        assert (state / "journal.jsonl").exists()

        first = re.search(r"import session (\w+) created", err)
        assert first is not None

        e57(path, 2 * MiB, seed=6)  # the user fixes the file and runs the same command again
        code, out, err = run(capsys, *args)
        assert code == 0, err
        assert "-> model" in out
        again = re.search(r"import session (\w+) created", err)
        # The journal knew the old session, saw the file changed and started a new one.
        assert again is not None and again.group(1) != first.group(1)
