"""Running the command line as a user does: ``python -m engine`` in a subprocess, stdout and
stderr captured apart (a pipe: the log view), in a clean environment of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = ["AWS_ENV", "MATTERPORT_ENV", "Run", "clean_env", "cli", "json_records", "stamped"]

#: the in-process/served sandbox's Matterport credentials, and moto's fake AWS ones
MATTERPORT_ENV = {
    "MATTERPORT_TOKEN_ID": "sandbox-token-id",
    "MATTERPORT_TOKEN_SECRET": "sandbox-token-secret",
}
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

#: a line of the log view: its time first
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} ")


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with nothing configured: no tokens, no AWS files, XDG
    directories under ``home``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("UPLOAD_ENGINE_", "MATTERPORT_", "SPECKLE_", "AWS_"))
    }
    env.update(
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_STATE_HOME=str(home / "state"),
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        COLUMNS="100",
    )
    env.update(extra)
    return env


def cli(*argv: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return Run(proc.returncode, proc.stdout, proc.stderr)


def json_records(out: str) -> list[dict[str, Any]]:
    """Every stdout line as a JSON object (any other line fails the test)."""
    records = [orjson.loads(line) for line in out.splitlines()]
    assert all(isinstance(r, dict) for r in records)
    return records


def stamped(lines: list[str]) -> bool:
    return bool(lines) and all(STAMP.match(line) for line in lines)
