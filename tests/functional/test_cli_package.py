"""The package as users get it: a lean ``pip install upload-engine`` (sandbox-only libraries
imported only by ``demo`` and ``sandbox``, uvloop an extra, an SPDX license), every extra named
in the README, and ``mypy --strict`` passing on a user's script against the installed (here:
editable) package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.functional.cli import clean_env

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
USER_SCRIPT = """
from __future__ import annotations

import anyio

from engine import S3Clients, S3Object, S3Target, UploadConfig, Uploader, UploadResult


async def main() -> list[str]:
    clients = S3Clients()
    out: list[str] = []
    async with Uploader(UploadConfig(concurrency=4)) as up:
        for name in ("a.bin", "b.bin"):
            result: UploadResult = await up.upload(name, S3Target("b", name, clients=clients))
            if isinstance(result.remote, S3Object):
                out.append(f"{result.remote.key} {result.remote.etag}")
    return out


print(anyio.run(main))
"""


def test_the_metadata_of_a_lean_install() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"  # SPDX (PEP 639): no setuptools deprecation banner
    assert not any("License ::" in c for c in project.get("classifiers", []))
    names = {d.split(">")[0].split("[")[0].split(";")[0].strip() for d in project["dependencies"]}
    assert "uvloop" not in names and "botocore" not in names
    extras = project["optional-dependencies"]
    assert {"s3", "uvloop", "dev", "bench"} <= set(extras)
    readme = (ROOT / "README.md").read_text()
    for extra in extras:
        assert f"upload-engine[{extra}]" in readme, extra


def test_a_real_upload_path_imports_no_sandbox_library(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    probe = (
        "import sys\nfrom engine.cli import main\n"
        f"code = main(['upload', {str(tmp_path / 'a.bin')!r}, '--to', 's3://b/k',"
        " '--endpoint-url', 'http://127.0.0.1:9'])\n"
        "print(code, sorted({m.split('.')[0] for m in sys.modules} | "
        "{'.'.join(m.split('.')[:2]) for m in sys.modules if m.startswith('engine.')}))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=clean_env(tmp_path), check=False)  # fmt: skip
    code, loaded = proc.stdout.split(" ", 1)
    assert code == "3", proc.stderr  # no AWS credentials: found before anything is read
    modules = set(eval(loaded))  # the list literal the probe printed
    assert "botocore" in modules  # the path really reached S3
    assert not modules & {"engine.sandbox", "graphql", "crc32c", "uvloop", "rich"}, modules


def test_mypy_strict_follows_the_installed_package(tmp_path: Path) -> None:
    """Against the venv's (editable) install: from a directory outside the checkout, mypy
    must find ``engine`` and its ``py.typed`` the static way (a .pth path, not an import
    hook: ``make venv`` installs with ``--config-settings editable_mode=strict``)."""
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT)
    mypy = Path(sys.executable).with_name("mypy")
    proc = subprocess.run(
        [str(mypy), "--strict", "--no-incremental", "--python-executable", sys.executable,
         script.name],
        capture_output=True, text=True, cwd=tmp_path, check=False,
        env={**clean_env(tmp_path), "MYPYPATH": "", "PYTHONPATH": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found in 1 source file" in proc.stdout
