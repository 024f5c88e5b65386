"""The basics users of s5cmd, rclone and aws-cli reach for first: ``--version``, ``python -m
engine``, ``-q`` / ``-v`` / ``-vv`` / ``--log-level``, and shell completion. Each runs the CLI
as a subprocess and reads what it printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from engine import MiB
from engine.sandbox.e57 import write_sample_e57
from tests.functional.cli import clean_env, cli, stamped

BIN = str(Path(sys.executable).with_name("upload-engine"))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return clean_env(tmp_path)


def test_version_from_the_script_and_from_python_m_engine(env: dict[str, str]) -> None:
    for argv in ([BIN, "--version"], [BIN, "-V"], [sys.executable, "-m", "engine", "-V"]):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        assert (proc.returncode, proc.stdout) == (0, f"upload-engine {engine.__version__}\n")
    run = cli("--help", env=env)
    assert run.code == 0 and "upload-engine" in run.out and "Exit codes:" in run.out


def _upload(tmp_path: Path, env: dict[str, str], *flags: str) -> tuple[int, list[str], str]:
    scan = tmp_path / "scan.e57"
    if not scan.exists():
        write_sample_e57(scan, 11 * MiB, seed=3)  # the blob store's parts: 5 + 5 + 1 MiB
    run = cli(
        "upload", str(scan), "--to", "sandbox", "--part-size", "64KiB", "--sandbox-faults",
        "503=0.3", "--max-attempts", "30", *flags, env=env, cwd=tmp_path,
    )  # fmt: skip
    return run.code, run.err.splitlines(), run.out


def test_quiet_default_verbose_and_very_verbose(tmp_path: Path, env: dict[str, str]) -> None:
    code, err, out = _upload(tmp_path, env, "-q")
    assert code == 0 and err == [], err  # -q: only the final line, on stdout
    assert out.startswith("uploaded 1 file to ")

    code, err, _ = _upload(tmp_path, env)
    assert code == 0 and stamped(err), err  # piped: every line has its time
    assert any("scan.e57: started, 11.0 MiB in 3 parts" in line for line in err), err
    assert not any("retrying in" in line for line in err), err  # retries are -v detail

    code, err, _ = _upload(tmp_path, env, "-v")
    assert code == 0 and stamped(err)
    retries = [line for line in err if "retrying in" in line]
    assert retries and all("HTTP 503" in line for line in retries), err
    assert not any(" HTTP PUT " in line for line in err)

    code, err, _ = _upload(tmp_path, env, "-vv")
    puts = [line for line in err if " HTTP PUT " in line]
    assert code == 0 and len(puts) >= 3, err  # every attempt, the retried ones too
    assert all(
        re.search(r"HTTP PUT http://127\.0\.0\.1:\d+/\S+ -> \d{3} \(\d+ ms\)$", p) for p in puts
    )
    assert all("?[redacted] -> " in p for p in puts)  # the query is where signatures live
    assert not any("[redacted]]" in line for line in err)  # redacting twice reads right

    same = _upload(tmp_path, env, "--log-level", "debug")[1]
    assert sum(" HTTP PUT " in line for line in same) >= 3
    assert _upload(tmp_path, env, "--log-level", "error")[1] == []
    # after the command's name or before it, alike
    run = cli("-q", "upload", str(tmp_path / "scan.e57"), "--to", "sandbox", env=env)
    assert run.code == 0 and run.err == ""
    run = cli("upload", str(tmp_path / "scan.e57"), "--to", "sandbox", "-q", "-v", env=env)
    assert run.code == 2 and run.err == "upload-engine: error: give -q or -v, not both\n"


def _complete(script: str, words: list[str]) -> list[str]:
    """What bash offers for the last of ``words`` with the generated script loaded."""
    quoted = " ".join(f"'{w}'" for w in words)
    probe = (
        f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
        '_upload_engine; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    return proc.stdout.split()


def test_completion_scripts(tmp_path: Path, env: dict[str, str]) -> None:
    run = cli("completion", "bash", env=env)
    assert run.code == 0
    bash = run.out
    assert _complete(bash, ["upload-engine", "up"]) == ["upload"]
    assert set(_complete(bash, ["upload-engine", ""])) >= {"upload", "import", "config", "demo"}
    assert "--to" in _complete(bash, ["upload-engine", "upload", "--t"])
    assert "--files-at-once" in _complete(bash, ["upload-engine", "import", "--fi"])
    assert _complete(bash, ["upload-engine", "-v", "upload", "x", "--to", "sandbox-s"]) == [
        "sandbox-speckle"
    ]
    assert _complete(bash, ["upload-engine", "import", "d", "--log-level", "D"]) == ["DEBUG"]
    assert _complete(bash, ["upload-engine", "config", ""]) == ["show"]
    assert _complete(bash, ["upload-engine", "sandbox", "serve", "--po"]) == ["--port"]
    (tmp_path / "scan-a.e57").write_bytes(b"")
    assert _complete(bash, ["upload-engine", "upload", str(tmp_path / "scan-")]) == [
        str(tmp_path / "scan-a.e57")
    ]
    zsh, fish = (cli("completion", shell, env=env).out for shell in ("zsh", "fish"))
    assert zsh.startswith("#compdef upload-engine\n")
    for command in ("upload", "import", "demo", "sandbox", "config", "completion"):
        assert f"-a {command} " in fish and f"'{command}:" in zsh
    for flag in ("--to", "--json", "--log-level", "--files-at-once", "--dry-run"):
        assert flag in zsh and f"-l {flag[2:]} " in fish
    assert "(ERROR NOTICE INFO DEBUG)" in zsh and "-a 'ERROR NOTICE INFO DEBUG'" in fish
    assert cli("completion", "tcsh", env=env).code == 2
