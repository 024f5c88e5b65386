"""The house rules of engine/ that a reviewer would otherwise count by hand.

- no module over 500 lines (the GraphQL documents included; the sandbox's SDL is .graphql data);
- no function over 60 lines;
- the command line's help never imports the sandbox, graphql-core, crc32c or botocore (a real
  upload pays only for what it uses).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


def test_the_command_line_loads_only_what_it_uses() -> None:
    probe = (
        "import sys, engine.cli as c; c.build_parser(); "
        "print(sorted({'.'.join(m.split('.')[: 2 if m.startswith('engine.') else 1])"
        " for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(eval(out.stdout))  # a list literal printed by the probe
    assert not loaded & {"engine.sandbox", "graphql", "crc32c", "botocore", "boto3"}
