"""The house rules of engine/ that a reviewer would otherwise count by hand.

- no module over 500 lines (the GraphQL documents included; the sandbox's SDL is .graphql data);
- no function over 60 lines;
- each command imports only what it uses (each pin runs a fresh interpreter and reads its
  ``sys.modules``): ``--help`` and parsing the arguments load no HTTP client, no sandbox, no
  graphql-core, crc32c, botocore or rich (the top-level ``--help`` not even a command's module);
  an upload to S3 loads neither platform's client nor the sandbox nor rich (off a terminal), one
  to Matterport or Speckle no botocore; ``import engine`` loads nothing behind its names.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine import KiB
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.ifc import write_sample_ifc
from engine.sandbox.matterport import MatterportSandboxConfig
from engine.sandbox.speckle import SpeckleSandboxConfig
from tests.functional.cli import AWS_ENV, MATTERPORT_ENV, clean_env
from tests.functional.servers import served_sandbox
from tests.integration.conftest import moto_endpoint, s3_bucket, s3_env

__all__ = ["moto_endpoint", "s3_bucket", "s3_env"]  # the fixtures, used by name

ENGINE = Path(__file__).resolve().parents[2] / "engine"


def _modules() -> list[Path]:
    return sorted(ENGINE.rglob("*.py"))


def test_no_module_over_500_lines() -> None:
    long = {
        str(p.relative_to(ENGINE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}


def test_no_function_over_60_lines() -> None:
    long: dict[str, int] = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > 60:
                    long[f"{path.relative_to(ENGINE)}:{node.name}"] = n
    assert long == {}


# ---- what each command imports ----------------------------------------------------------------

#: what no parser needs: the HTTP client and what only an upload, a platform or the sandbox uses
HEAVY = ("aiohttp", "asyncio", "ssl", "rich", "botocore", "boto3", "graphql", "crc32c",
         "cryptography", "engine.sandbox", "engine.client", "engine.graphql")  # fmt: skip
COMMAND_MODULES = ("upload", "import_", "demo", "sandbox", "config_cmd", "completion")


def _loaded(run: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter holds after the statements ``run`` (a ``SystemExit(0)``,
    as ``--help`` raises, ends them too)."""
    probe = (
        "import sys\ntry:\n"
        + textwrap.indent(run, "    ")
        + "\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
        "print(sorted(sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    modules: list[str] = ast.literal_eval(proc.stdout.splitlines()[-1])
    return set(modules)


def _among(loaded: set[str], names: tuple[str, ...]) -> set[str]:
    """The packages of ``names`` that ``loaded`` holds (a package or any module inside it)."""
    return {n for n in names if any(m == n or m.startswith(n + ".") for m in loaded)}


def _main(*argv: str) -> str:
    return f"from engine.cli import main\nassert main({list(argv)!r}) == 0"


def test_the_top_level_help_loads_no_command() -> None:
    loaded = _loaded(_main("--help"))
    commands = tuple(f"engine.cli.{m}" for m in COMMAND_MODULES)
    assert _among(loaded, (*HEAVY, "anyio", "orjson", "engine.providers", *commands)) == set()


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (["upload", "--help"], "upload"),
        (["import", "--help"], "import_"),
        (["demo", "--help"], "demo"),
        (["config", "show", "--help"], "config_cmd"),
        (["sandbox", "--help"], "sandbox"),
        (["completion", "--help"], "completion"),
    ],
)
def test_a_commands_help_loads_that_command_alone(argv: list[str], module: str) -> None:
    loaded = _loaded(_main(*argv))
    others = tuple(f"engine.cli.{m}" for m in COMMAND_MODULES if m != module)
    assert f"engine.cli.{module}" in loaded
    assert _among(loaded, (*HEAVY, *others)) == set()


def test_parsing_the_arguments_loads_no_http_client() -> None:
    for argv in (["upload", "a.e57", "--to", "s3://b/k"], ["import", ".", "--to", "sandbox"]):
        parse = f"from engine.cli import build_parser\nbuild_parser().parse_args({argv!r})"
        assert _among(_loaded(parse), HEAVY) == set(), argv


def test_import_engine_loads_nothing_behind_its_names() -> None:
    loaded = _loaded("import engine")
    assert {m for m in loaded if m.startswith("engine")} == {"engine", "engine.lazy"}
    assert _among(loaded, ("aiohttp", "anyio", "orjson")) == set()


@pytest.mark.parametrize(
    "package", ["engine", "engine.providers.matterport", "engine.providers.speckle"]
)
def test_the_lazy_names_are_the_imports_mypy_reads(package: str) -> None:
    """Each name of a package's ``__all__`` is the object its ``if TYPE_CHECKING:`` import
    names, so what mypy checks is what runs."""
    pkg = importlib.import_module(package)
    tree = ast.parse(Path(pkg.__file__ or "").read_text())
    guard = next(
        n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"
    )
    typed = {
        alias.name: node.module
        for node in guard.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }
    assert set(typed) == set(pkg.__all__) - {"__version__"}
    for name, module in typed.items():
        assert getattr(pkg, name) is getattr(importlib.import_module(module), name), name
    assert set(pkg.__all__) <= set(dir(pkg))


def test_an_s3_upload_loads_no_platform_client_sandbox_or_rich(
    tmp_path: Path, moto_endpoint: str, s3_bucket: str
) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 3000)
    up = _main("upload", str(tmp_path / "a.bin"), "--to", f"s3://{s3_bucket}/a.bin",
               "--endpoint-url", moto_endpoint)  # fmt: skip
    loaded = _loaded(up, env=clean_env(tmp_path, **AWS_ENV))  # stdout and stderr: pipes
    assert "botocore" in loaded  # the upload ran, with the S3 client
    platforms = ("engine.providers.matterport.session", "engine.providers.speckle.provider")
    assert (
        _among(loaded, ("graphql", "engine.graphql", "engine.sandbox", "rich", *platforms)) == set()
    )


def test_platform_uploads_load_no_botocore(tmp_path: Path) -> None:
    write_sample_e57(tmp_path / "scan.e57", 100 * KiB, seed=1)
    write_sample_ifc(tmp_path / "tower.ifc", 80 * KiB, seed=2)
    env = clean_env(tmp_path, **MATTERPORT_ENV, SPECKLE_TOKEN="sandbox-token")
    planes = {
        "matterport": MatterportSandboxConfig(min_part_size=64 * KiB, model_delay=0.0),
        "speckle": SpeckleSandboxConfig(step_delay=0.0),
    }
    with served_sandbox(**planes) as sb:
        matterport = _main("upload", str(tmp_path / "scan.e57"), "--to", "matterport",
                           "--organization", "sandbox-org", "--endpoint",
                           f"{sb.url}/api/import/graph")  # fmt: skip
        speckle = _main("upload", str(tmp_path / "tower.ifc"), "--to", "speckle", "--project",
                        "sandbox-project", "--server", sb.url)  # fmt: skip
        for up, client in ((matterport, "matterport.session"), (speckle, "speckle.provider")):
            loaded = _loaded(up, env=env)
            assert f"engine.providers.{client}" in loaded  # the upload ran, with its client
            assert _among(loaded, ("botocore", "boto3", "engine.sandbox", "graphql")) == set()
