"""Repeats and ``--force`` through the command line, against a served sandbox.

The same command after a finished upload that the server confirms sends nothing and says one
line: ``already uploaded: <where> on <when>; --force to upload again``, with 0 bytes sent and
no throughput; ``--json`` and ``--report`` say ``"status": "skipped", "reason": "already
uploaded"``; ``--force`` uploads again as a new Matterport model / Speckle version. The model
wait takes ``--processing-timeout``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine import KiB
from engine.cli import main
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.ifc import write_sample_ifc
from engine.sandbox.matterport import MatterportPlane, MatterportSandboxConfig
from engine.sandbox.server import Sandbox
from engine.sandbox.speckle import SpecklePlane, SpeckleSandboxConfig
from tests.functional.servers import served_sandbox

ALREADY = re.compile(
    r"^already uploaded: (?P<what>.+) on \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC; "
    r"--force to upload again$"
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MATTERPORT_TOKEN_ID", "sandbox-token-id")
    monkeypatch.setenv("MATTERPORT_TOKEN_SECRET", "sandbox-token-secret")
    monkeypatch.setenv("SPECKLE_TOKEN", "sandbox-token")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("UPLOAD_ENGINE_CREDENTIALS_FILE", raising=False)


@pytest.fixture
def sandbox() -> Any:
    planes = {
        "matterport": MatterportSandboxConfig(min_part_size=0, model_delay=0.02),
        "speckle": SpeckleSandboxConfig(step_delay=0.0),
    }
    with served_sandbox(**planes) as sb:
        yield sb


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out, err


def result_of(out: str) -> dict[str, Any]:
    record: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    assert record["type"] == "Result"
    return record


def matterport_args(sb: Sandbox, state: Path, *paths: Path) -> list[str]:
    return [
        "upload",
        *map(str, paths),
        "--to",
        "matterport",
        "--endpoint",
        f"{sb.url}/api/import/graph",
        "--organization",
        "sandbox-org",
        "--state-dir",
        str(state),
    ]


def received(sb: Sandbox) -> int:
    return int(sb.store.stats()["bytes_received"])


def test_an_upload_repeated_says_already_uploaded_in_one_line_and_force_sends_again(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.e57"
    write_sample_e57(path, 300 * KiB, seed=1)
    argv = matterport_args(sandbox, tmp_path / "state", path)
    mp = next(p for p in sandbox.planes if isinstance(p, MatterportPlane))
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 0
    first = result_of(out)
    sent = received(sandbox)

    code, out, err = run(capsys, *argv)
    assert code == 0 and received(sandbox) == sent  # nothing sent
    (line,) = out.strip().splitlines()
    found = ALREADY.match(line)
    assert found, line
    assert found["what"] == f"model {first['model_id']} (session {first['session_id']})"
    assert "MB/s" not in out + err and "MiB/s" not in out + err

    code, out, _ = run(capsys, *argv, "--json")
    again = result_of(out)
    assert (code, again["status"], again["reason"]) == (0, "skipped", "already uploaded")
    assert again["bytes_sent"] == 0 and "throughput" not in again
    assert again["model_id"] == first["model_id"]

    code, out, _ = run(capsys, *argv, "--force", "--json")
    forced = result_of(out)
    assert code == 0 and forced.get("status") != "skipped"
    assert forced["model_id"] != first["model_id"] and forced["session_id"] != first["session_id"]
    assert received(sandbox) == 2 * sent and forced["bytes_sent"] == path.stat().st_size
    assert len(mp.sessions) == 2


def test_speckle_repeated_and_forced(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tower.ifc"
    write_sample_ifc(path, 80_000, seed=2)
    argv = ["upload", str(path), "--to", "speckle", "--server", sandbox.url]
    argv += ["--project", "sandbox-project", "--state-dir", str(tmp_path / "state")]
    code, out, _ = run(capsys, *argv, "--json")
    first = result_of(out)["files"][0]
    code, out, _ = run(capsys, *argv)
    (line,) = out.strip().splitlines()
    found = ALREADY.match(line)
    assert code == 0 and found, line
    assert found["what"] == f"version {first['version_id']} of model {first['model_id']}"
    code, out, _ = run(capsys, *argv, "--json")
    record = result_of(out)
    assert (record["status"], record["reason"], record["bytes_sent"]) == (
        "skipped",
        "already uploaded",
        0,
    )
    assert record["files"][0]["status"] == "skipped"
    code, out, _ = run(capsys, *argv, "--force", "--json")
    forced = result_of(out)["files"][0]
    assert code == 0 and forced["status"] == "ok"
    assert forced["model_id"] == first["model_id"] and forced["version_id"] != first["version_id"]
    sp = next(p for p in sandbox.planes if isinstance(p, SpecklePlane))
    assert len(sp.versions) == 2


def test_an_import_repeated_reports_skipped_already_uploaded_and_force_imports_again(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tmp_path / "scans"
    tree.mkdir()
    write_sample_e57(tree / "a.e57", 200 * KiB, seed=3)
    argv = [
        "import",
        str(tree),
        "--to",
        "matterport",
        "--endpoint",
        f"{sandbox.url}/api/import/graph",
        "--organization",
        "sandbox-org",
        "--state-dir",
        str(tmp_path / "state"),
    ]
    report = tmp_path / "report.json"
    assert run(capsys, *argv, "--report", str(report))[0] == 0
    first = {Path(f["path"]).name: f for f in orjson.loads(report.read_bytes())["files"]}
    assert first["a.e57"]["status"] == "ok"
    sent = received(sandbox)
    assert run(capsys, *argv, "--report", str(report))[0] == 0
    again = {Path(f["path"]).name: f for f in orjson.loads(report.read_bytes())["files"]}
    assert received(sandbox) == sent
    assert (again["a.e57"]["status"], again["a.e57"]["reason"]) == ("skipped", "already uploaded")
    summary = orjson.loads(report.read_bytes())["summary"]
    assert summary["bytes_sent"] == 0 and summary["ok"] == 0
    code, out, _ = run(capsys, *argv, "--force", "--json")
    forced = {Path(f["path"]).name: f for f in result_of(out)["files"]}
    assert code == 0 and forced["a.e57"]["status"] == "ok"
    assert forced["a.e57"]["model_id"] != first["a.e57"]["model_id"]
    assert received(sandbox) == 2 * sent


def test_the_model_wait_takes_the_processing_timeout(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "torn.e57"
    write_sample_e57(path, 300 * KiB, seed=5)
    with path.open("r+b") as f:  # a page CRC broken: the platform never makes a model
        f.seek(100 * KiB)
        f.write(b"\xff" * 64)
    argv = matterport_args(sandbox, tmp_path / "state", path)
    code, _, err = run(capsys, *argv, "--processing-timeout", "1.5")
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert "no model for import session" in last and "after 1.5 s" in last
