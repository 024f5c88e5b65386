"""Load: a bulk import of 1,000 small IFC files and two 64 MiB E57 scans holds memory flat and
never has more PUTs in flight than ``--concurrency``.

The import runs in a child process (``upload-engine import DIR --to sandbox``, whose sandbox is
in-process, so the figure covers client and server together). The child samples its own RSS
every 0.2 s and reports its peak (``VmHWM``) and the sandbox's counters, among them
``max_puts_in_flight``: the most PUT requests the blob store was serving at once. The test
prints the figures (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import KiB, MiB
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.ifc import MIN_SAMPLE_SIZE, write_sample_ifc

pytestmark = pytest.mark.slow

SMALL_FILES = 1000
SMALL_SIZE = 4 * KiB
LARGE_FILES = 2
LARGE_SIZE = 64 * MiB
CONCURRENCY = 4
PEAK_LIMIT = 200 * MiB  # client + in-process sandbox; measured about 100 MiB
GROWTH_LIMIT = 16 * MiB  # RSS from a quarter into the run to its end

CHILD = r"""
import functools, json, sys, threading, time
from engine.cli import main
from engine.sandbox import server, speckle

made = []

class Recording(server.Sandbox):
    def __init__(self, config=None):
        super().__init__(config)
        made.append(self)

server.Sandbox = Recording
# Ingestion answers at the first poll, and the public server's rate limit (50 requests a
# second) is off: the run measures the engine's memory and budget, not the plane's timers.
speckle.SpeckleSandboxConfig = functools.partial(
    speckle.SpeckleSandboxConfig, step_delay=0.0, rate_limit_per_second=None
)

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0

samples, done = [], threading.Event()

def sample():
    start = time.monotonic()
    while not done.wait(0.2):
        samples.append((round(time.monotonic() - start, 2), status("VmRSS")))

threading.Thread(target=sample, daemon=True).start()
started = time.monotonic()
code = main(sys.argv[2:])
seconds = time.monotonic() - started
done.set()
(sandbox,) = made
stats = sandbox.store.stats()
planes = sandbox.stats()["planes"]
with open(sys.argv[1], "w") as out:
    json.dump({
        "code": code, "seconds": seconds, "peak": status("VmHWM"), "samples": samples,
        "max_puts_in_flight": stats.get("max_puts_in_flight"),
        "requests": stats["requests"], "objects": stats["objects"],
        "versions": planes["speckle"]["versions"], "models": planes["matterport"]["models"],
    }, out)
"""


def test_a_thousand_small_files_and_two_large_ones_hold_memory_flat(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    for folder in range(10):
        (scans / f"floor-{folder:02}").mkdir(parents=True)
    assert SMALL_SIZE >= MIN_SAMPLE_SIZE
    for i in range(SMALL_FILES):
        write_sample_ifc(scans / f"floor-{i % 10:02}" / f"element-{i:04}.ifc", SMALL_SIZE, seed=i)
    for i in range(LARGE_FILES):
        # named to sort first: the large files go first, the small ones then run alone
        write_sample_e57(scans / f"a-site-{i}.e57", LARGE_SIZE, seed=1000 + i)
    result = tmp_path / "result.json"
    report = tmp_path / "report.json"
    argv = [
        "import", str(scans), "--to", "sandbox", "--concurrency", str(CONCURRENCY),
        "--files-at-once", "64", "--part-size", "8MiB", "--report", str(report), "--json",
    ]  # fmt: skip
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(result), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    wall = time.monotonic() - started
    assert child.returncode == 0, child.stderr[-2000:]
    got = json.loads(result.read_text())
    assert got["code"] == 0
    files = json.loads(report.read_text())["files"]
    assert sum(f["status"] == "ok" for f in files) == SMALL_FILES + LARGE_FILES
    assert got["versions"] == SMALL_FILES and got["models"] == LARGE_FILES

    samples = [rss for _, rss in got["samples"]]
    assert len(samples) >= 8, "the run was too short to sample"
    quarter, end = samples[len(samples) // 4], samples[-1]
    in_flight = got["max_puts_in_flight"]
    print(
        f"\nload: {SMALL_FILES} x {SMALL_SIZE // KiB} KiB IFC + {LARGE_FILES} x "
        f"{LARGE_SIZE // MiB} MiB E57 in {got['seconds']:.1f} s (child wall {wall:.1f} s); "
        f"peak RSS {got['peak'] / MiB:.0f} MiB; RSS {quarter / MiB:.0f} MiB a quarter in, "
        f"{end / MiB:.0f} MiB at the end; max PUTs in flight {in_flight} "
        f"(--concurrency {CONCURRENCY}); {got['requests']} blob requests"
    )
    assert got["peak"] < PEAK_LIMIT
    assert end - quarter < GROWTH_LIMIT  # a thousand more files cost no more memory
    assert in_flight is not None, "the blob store must report max_puts_in_flight"
    assert 1 <= in_flight <= CONCURRENCY
