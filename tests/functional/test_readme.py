"""The README's async example runs as written (against the sandbox it starts itself)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from engine.sandbox.e57 import write_sample_e57

README = Path(__file__).parents[2] / "README.md"


def test_the_async_example_runs_as_written(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README has no python example"
    (tmp_path / "example.py").write_text(blocks[0])
    write_sample_e57(tmp_path / "scan.e57", 6 * 1024 * 1024, seed=7)
    proc = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"^model \w+: 6291456 bytes in [\d.]+ s$", proc.stdout, flags=re.M)
