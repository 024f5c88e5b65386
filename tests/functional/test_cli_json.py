"""One JSON contract: with ``--json`` stdout carries JSON lines only, each with ``type`` and
``ts``, always ending with exactly one ``Result`` (``ok`` false after a failure or an
interrupt); tables and text go to stderr. Every record of real runs is validated against
``docs/json-output.schema.json`` (``jsonschema``, the dev extra's validator)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine import KiB, MiB
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.faults import FaultPlan
from engine.sandbox.ifc import write_sample_ifc
from engine.sandbox.matterport import MatterportSandboxConfig
from tests.functional.cli import MATTERPORT_ENV, clean_env, cli, json_records
from tests.functional.servers import served_sandbox

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "json-output.schema.json").read_text()
)


def checked(out: str) -> list[dict[str, Any]]:
    """stdout's records, each valid against the schema, the last the one ``Result``."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    records = json_records(out)
    for record in records:
        jsonschema.validate(record, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert [r["type"] for r in records].count("Result") == 1 and records[-1]["type"] == "Result"
    return records


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return clean_env(tmp_path)


def test_a_successful_upload(tmp_path: Path, env: dict[str, str]) -> None:
    scan = tmp_path / "scan.e57"
    write_sample_e57(scan, 6 * MiB, seed=2)
    run = cli("upload", str(scan), "--to", "sandbox", "--json", "--sandbox-faults", "503=0.3",
              "--max-attempts", "20", env=env)  # fmt: skip
    records = checked(run.out)
    assert run.code == 0, run.output
    types = [r["type"] for r in records]
    assert types[0] == "FileStarted" and "FileFinished" in types
    result = records[-1]
    assert (result["ok"], result["exit_code"], result["bytes"]) == (True, 0, 6 * MiB)
    assert "not a JSON line" not in run.err


def test_failures_end_with_a_result_too(tmp_path: Path, env: dict[str, str]) -> None:
    missing = cli("upload", str(tmp_path / "nope.e57"), "--to", "sandbox", "--json", env=env)
    (result,) = checked(missing.out)
    assert missing.code == result["exit_code"] == 2 and result["ok"] is False
    assert result["error"] == f"{tmp_path / 'nope.e57'}: no such file"
    assert missing.err.startswith("upload-engine: error: ")

    scan = tmp_path / "scan.e57"
    write_sample_e57(scan, 64 * KiB, seed=2)
    failed = cli("upload", str(scan), "--to", "sandbox", "--json", "--sandbox-faults",
                 "503=1.0", "--max-attempts", "1", env=env)  # fmt: skip
    records = checked(failed.out)
    assert failed.code == records[-1]["exit_code"] == 1 and records[-1]["ok"] is False
    assert "FileFailed" in [r["type"] for r in records]
    assert records[-1]["error"].startswith("part 1 failed 1 time; last: HTTP 503 ")

    usage = cli("import", str(tmp_path), "--to", "somewhere", "--json", env=env)
    (result,) = checked(usage.out)
    assert usage.code == result["exit_code"] == 2


def test_a_dry_run_prints_its_table_on_stderr(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "site").mkdir()
    write_sample_e57(tmp_path / "site" / "a.e57", 64 * KiB, seed=1)
    write_sample_ifc(tmp_path / "site" / "b.ifc", 64 * KiB, seed=1)
    run = cli("import", str(tmp_path / "site"), "--to", "sandbox", "--dry-run", "--json", env=env)
    assert run.code == 0, run.output
    (result,) = checked(run.out)
    assert {Path(p["path"]).name for p in result["plan"]} == {"a.e57", "b.ifc"}
    assert "plan: upload to sandbox (nothing sent)" in run.err


def test_an_interrupted_import_ends_with_ok_false(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(4):
        write_sample_e57(scans / f"s{i}.e57", 1 * MiB, seed=i)
    planes = {
        "faults": FaultPlan(latency=0.25),
        "matterport": MatterportSandboxConfig(min_part_size=256 * KiB, model_delay=0.0),
    }
    with served_sandbox(**planes) as sb:
        cmd = [
            sys.executable, "-m", "engine", "import", str(scans), "--to", "matterport",
            "--organization", "sandbox-org", "--endpoint", f"{sb.url}/api/import/graph",
            "--part-size", "256KiB", "--concurrency", "2", "--json", "--grace", "0.5",
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=clean_env(tmp_path, **MATTERPORT_ENV),
        )  # fmt: skip
        assert proc.stdout is not None
        seen = ""
        try:
            while '"type":"FileStarted"' not in seen:  # the parts are on their way
                line = proc.stdout.readline()
                assert line, "the import ended before sending"
                seen += line
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            rest, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    records = checked(seen + rest)
    assert proc.returncode == 130, err
    result = records[-1]
    assert (result["ok"], result["exit_code"]) == (False, 130)
    assert result["summary"]["interrupted"] >= 1
