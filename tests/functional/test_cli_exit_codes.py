"""One exit-code table for ``upload`` and ``import`` and every destination: 0 done, 1 a file
failed remotely, 2 usage or local input error, 3 authentication or permission, 130
interrupted (``test_cli_json``). The same cause gives the same code from both commands."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine import KiB
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.ifc import write_sample_ifc
from tests.functional.cli import MATTERPORT_ENV, Run, clean_env, cli
from tests.functional.servers import served_sandbox


def both(
    tmp_path: Path, env: dict[str, str], name: str, to: list[str], tree: list[str] | None = None
) -> tuple[Run, Run]:
    """``upload FILE`` and ``import DIR`` (DIR holding FILE alone) with the same flags (or,
    for ``import``, ``tree``)."""
    folder = tmp_path / name.split(".")[0]
    run_upload = cli("upload", str(folder / name), *to, env=env)
    report = tmp_path / f"{name}.report.json"
    run_import = cli("import", str(folder), *(tree or to), "--report", str(report), env=env)
    return run_upload, run_import


def scan_in(tmp_path: Path, name: str, content: bytes | None = None) -> Path:
    folder = tmp_path / name.split(".")[0]
    folder.mkdir(exist_ok=True)
    path = folder / name
    if content is not None:
        path.write_bytes(content)
    elif name.endswith(".e57"):
        write_sample_e57(path, 64 * KiB, seed=1)
    else:
        write_sample_ifc(path, 64 * KiB, seed=1)
    return path


def test_a_bad_header_is_2_from_both(tmp_path: Path) -> None:
    scan_in(tmp_path, "junk.e57", b"PK\x03\x04" * 1000)
    env = clean_env(tmp_path)
    up, imp = both(tmp_path, env, "junk.e57", ["--to", "sandbox-matterport"], ["--to", "sandbox"])
    assert (up.code, imp.code) == (2, 2), up.output + imp.output
    assert "not an E57 file" in up.err and "not an E57 file" in imp.err
    report = orjson.loads((tmp_path / "junk.e57.report.json").read_bytes())
    assert [f["status"] for f in report["files"]] == ["failed"]
    # a good file beside it is uploaded; the run still says the input needs fixing
    write_sample_e57(tmp_path / "junk" / "good.e57", 64 * KiB, seed=2)
    report_path = tmp_path / "again.json"
    again = cli("import", str(tmp_path / "junk"), "--to", "sandbox", "--report", str(report_path),
                env=env)  # fmt: skip
    assert again.code == 2, again.output
    files = orjson.loads(report_path.read_bytes())["files"]
    assert {Path(f["path"]).name: f["status"] for f in files} == {"junk.e57": "failed",
                                                                 "good.e57": "ok"}  # fmt: skip


def test_missing_credentials_are_3_for_every_destination(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    scan_in(tmp_path, "scan.e57")
    up, imp = both(tmp_path, env, "scan.e57", ["--to", "matterport", "--organization", "o"])
    assert (up.code, imp.code) == (3, 3), up.output + imp.output
    assert up.err.startswith("upload-engine: error: no Matterport credentials")
    scan_in(tmp_path, "tower.ifc")
    up, imp = both(tmp_path, env, "tower.ifc", ["--to", "speckle", "--project", "p"])
    assert (up.code, imp.code) == (3, 3) and "SPECKLE_TOKEN is not set" in up.err
    to_s3 = ["--to", "s3://bucket/scans/", "--endpoint-url", "http://127.0.0.1:9"]
    up, imp = both(tmp_path, env, "scan.e57", to_s3)
    assert (up.code, imp.code) == (3, 3), up.output + imp.output
    assert "no AWS credentials found" in up.err and "no AWS credentials found" in imp.err


@pytest.mark.parametrize(
    ("name", "flags", "env_extra", "code"),
    [
        ("scan.e57", ["--to", "matterport", "--organization", "sandbox-org"],
         {**MATTERPORT_ENV, "MATTERPORT_TOKEN_SECRET": "wrong"}, 3),
        ("scan.e57", ["--to", "matterport", "--organization", "no-such-org"], MATTERPORT_ENV, 3),
        ("tower.ifc", ["--to", "speckle", "--project", "sandbox-project"],
         {"SPECKLE_TOKEN": "not-a-token"}, 3),
        ("tower.ifc", ["--to", "speckle", "--project", "no-such-project"],
         {"SPECKLE_TOKEN": "sandbox-token"}, 1),
    ],
)  # fmt: skip
def test_what_the_platform_refuses(
    tmp_path: Path, name: str, flags: list[str], env_extra: dict[str, str], code: int
) -> None:
    scan_in(tmp_path, name)
    with served_sandbox() as sb:
        where = (
            ["--endpoint", f"{sb.url}/api/import/graph"]
            if "matterport" in flags
            else ["--server", sb.url]
        )
        up, imp = both(tmp_path, clean_env(tmp_path, **env_extra), name, [*flags, *where])
    assert (up.code, imp.code) == (code, code), up.output + imp.output
    assert up.err.startswith("upload-engine: failed: ")
