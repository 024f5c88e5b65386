"""Defaults without flags: the config file's profiles (``tomllib``), ``UPLOAD_ENGINE_*`` and the
precedence flag > env > profile > default, shown by ``config show`` with secrets redacted, and
used by a real upload that names nothing but the file and the platform."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import KiB
from engine.sandbox.ifc import write_sample_ifc
from engine.sandbox.speckle import SpeckleSandboxConfig
from tests.functional.cli import clean_env, cli, json_records
from tests.functional.servers import served_sandbox

SPECKLE_TOKEN = "spk-config-token-Q7"
CONFIG = """
[default]
speckle_server = "http://127.0.0.1:1"
speckle_project = "from-default"
concurrency = 3

[profiles.qa]
speckle_project = "from-qa"
part_size = "8MiB"
"""


def _write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "config" / "upload-engine" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _show(env: dict[str, str], *flags: str) -> dict[str, dict[str, str]]:
    run = cli("config", "show", "--json", *flags, env=env)
    assert run.code == 0, run.output
    (result,) = json_records(run.out)
    settings: dict[str, dict[str, str]] = result["settings"]
    return settings


def test_precedence_flag_env_profile_default(tmp_path: Path) -> None:
    path = _write_config(tmp_path)
    env = clean_env(tmp_path, SPECKLE_TOKEN=SPECKLE_TOKEN)
    s = _show(env)
    assert s["speckle_project"] == {"value": "from-default", "source": f"config {path} [default]"}
    assert s["concurrency"]["value"] == "3"
    assert s["part_size"] == {"value": str(64 * 1024 * 1024), "source": "default"}
    assert s["matterport_endpoint"]["source"] == "default"
    assert s["SPECKLE_TOKEN"] == {"value": "[redacted]", "source": "env SPECKLE_TOKEN"}
    assert s["MATTERPORT_TOKEN_ID"] == {"value": "(not set)", "source": "-"}

    s = _show({**env, "UPLOAD_ENGINE_PROFILE": "qa"})  # a profile stands alone, like aws-cli's
    assert s["speckle_project"]["value"] == "from-qa"
    assert s["concurrency"] == {"value": "(adaptive, up to max_concurrency)", "source": "default"}
    assert s["max_concurrency"] == {"value": "64", "source": "default"}
    assert s["part_size"]["value"] == str(8 * 1024 * 1024)

    env_over = {**env, "UPLOAD_ENGINE_SPECKLE_PROJECT": "from-env"}
    s = _show(env_over, "--config-profile", "qa")
    assert s["speckle_project"] == {
        "value": "from-env",
        "source": "env UPLOAD_ENGINE_SPECKLE_PROJECT",
    }
    s = _show(env_over, "--project", "from-flag")
    assert s["speckle_project"] == {"value": "from-flag", "source": "flag"}

    human = cli("config", "show", env=env)
    assert human.code == 0 and SPECKLE_TOKEN not in human.out + human.err
    assert f"config file {path} (found)" in human.out
    assert any(line.split() == ["speckle_project", "from-default", "config", str(path), "[default]"]
               for line in human.out.splitlines()), human.out  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[default\n", "not valid TOML"),
        ("[default]\nspeckle_projekt = 'x'\n", "unknown setting 'speckle_projekt'"),
        ("[default]\nconcurrency = 'many'\n", "concurrency = 'many': expected a whole number"),
        ("[default]\npart_size = '12 parsecs'\n", "part_size = '12 parsecs': not a size"),
        ("[settings]\n", "unknown table [settings]"),
    ],
)
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, text: str, message: str) -> None:
    path = _write_config(tmp_path, text)
    run = cli("upload", "x.ifc", "--to", "speckle", env=clean_env(tmp_path))
    assert run.code == 2 and run.err.count("\n") == 1, run.output
    assert run.err.startswith(f"upload-engine: error: config file {path}") and message in run.err


def test_unknown_profile_and_bad_env_value(tmp_path: Path) -> None:
    _write_config(tmp_path)
    env = clean_env(tmp_path)
    run = cli("config", "show", "--config-profile", "prod", env=env)
    assert run.code == 2 and "no profile [profiles.prod]" in run.err
    run = cli("config", "show", env={**env, "UPLOAD_ENGINE_CONCURRENCY": "0"})
    assert run.code == 2
    assert run.err == (
        "upload-engine: error: UPLOAD_ENGINE_CONCURRENCY: concurrency = '0': "
        "expected a whole number of at least 1\n"
    )


def test_an_upload_takes_server_and_project_from_the_config_file(tmp_path: Path) -> None:
    model = tmp_path / "tower.ifc"
    write_sample_ifc(model, 64 * KiB, seed=4)
    planes = {"speckle": SpeckleSandboxConfig(tokens={SPECKLE_TOKEN: {"sandbox-project"}})}
    with served_sandbox(**planes) as sb:
        _write_config(
            tmp_path,
            f'[default]\nspeckle_server = "{sb.url}"\nspeckle_project = "sandbox-project"\n',
        )
        env = clean_env(tmp_path, SPECKLE_TOKEN=SPECKLE_TOKEN)
        run = cli("upload", str(model), "--to", "speckle", env=env)
        assert run.code == 0, run.output
        assert run.out.startswith("speckle project sandbox-project model ")
        # an environment variable beats the file: an unknown project now
        run = cli(
            "upload", str(model), "--to", "speckle",
            env={**env, "UPLOAD_ENGINE_SPECKLE_PROJECT": "elsewhere"},
        )  # fmt: skip
        assert run.code == 1 and "project not found" in run.err, run.output
