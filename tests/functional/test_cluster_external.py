"""``import --cluster ADDRESS`` against a Dask cluster of its own processes (``dask scheduler``
and ``dask worker``, as an operator runs them), and a sandbox served with a few faults.

What this proves (issue 16):

* before any upload, a worker that does not see the tree at the same path (a worker in its own
  mount namespace, with an empty file system over the tree) is named, and nothing is sent;
* the coordinator SIGKILLed mid-import (the workers live on and finish the PUTs they had),
  then the scheduler SIGKILLed mid-import of the rerun: that run exits cleanly (130, one line
  saying why, how to resume, no traceback); a third run on a new cluster resumes from the
  journal and every file is committed once, byte-identical;
* no presigned URL's signature in the scheduler's or the workers' logs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.config import KiB, MiB
from tests.functional.test_bulk import (
    ENV,
    Served,
    assert_delivered_once,
    assert_journal_consistent,
    bytes_after,
    import_cmd,
    mp,
    run_import,
    write_scans,
)
from tests.functional.test_cluster import SECRETS, sandbox_process

DASK = str(Path(sys.executable).with_name("dask"))  # the venv's, beside upload-engine
PART = 256 * KiB
FLAGS = ("--concurrency", "2", "--part-size", str(PART), "--stall-timeout", "5")
WORKER_FLAGS = ("--nthreads", "2", "--no-dashboard", "--no-nanny")


@dataclass
class DaskCluster:
    """A ``dask scheduler`` and its ``dask worker`` processes, logging into ``logs``."""

    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    address: str = ""

    def start(self, workers: int, *, wrap: tuple[str, ...] = ()) -> None:
        """A scheduler (when none runs) and ``workers`` more workers, ``wrap`` prefixed."""
        self.logs.mkdir(exist_ok=True)
        if not self.address:
            schedfile = self.logs / f"scheduler-{len(self.procs)}.json"
            where = ["--host", "127.0.0.1", "--port", "0", "--scheduler-file", str(schedfile)]
            self._spawn([DASK, "scheduler", *where, "--no-dashboard"])
            deadline = time.monotonic() + 30
            while not schedfile.exists() or not schedfile.read_text().strip():
                assert time.monotonic() < deadline, "the scheduler did not start"
                time.sleep(0.05)
            time.sleep(0.1)
            self.address = json.loads(schedfile.read_text())["address"]
        for _ in range(workers):
            self._spawn([*wrap, DASK, "worker", self.address, *WORKER_FLAGS])

    def _spawn(self, argv: list[str]) -> None:
        log = (self.logs / f"dask-{len(self.procs)}.log").open("wb")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=ENV))
        log.close()

    def wait_for(self, workers: int) -> None:
        """Until exactly ``workers`` workers are connected (from the scheduler's own log)."""
        deadline = time.monotonic() + 30
        while self.connected() != workers:
            assert time.monotonic() < deadline, f"{self.connected()} workers, not {workers}"
            time.sleep(0.05)

    def connected(self) -> int:
        text = self.log(self.procs[0])
        return text.count("Register worker") - text.count("Remove worker")

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.logs / f"dask-{self.procs.index(proc)}.log").read_text(errors="replace")

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def all_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs.glob("dask-*.log"))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with sandbox_process(tmp_path, "--faults", "503=0.03", "--seed", "17") as s:
        yield s


@pytest.fixture
def dask_logs(tmp_path: Path) -> Iterator[Path]:
    logs = tmp_path / "dask"
    logs.mkdir()
    yield logs


@pytest.mark.slow
def test_an_external_cluster_refuses_a_blind_worker_and_survives_losing_coordinator_and_scheduler(
    tmp_path: Path, served: Served, dask_logs: Path
) -> None:
    tree = tmp_path / "scans"
    e57 = write_scans(tree, [("a.e57", 2 * MiB), ("b/c.e57", 1 * MiB + 300 * KiB)], seed=1640)
    state = tmp_path / "state"
    first, second = DaskCluster(dask_logs / "first"), DaskCluster(dask_logs / "second")
    try:
        # A worker in its own mount namespace, an empty tmpfs over the tree: it cannot read it.
        first.start(2)
        blind = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
                 f'mount -t tmpfs none "{tree}" && exec "$0" "$@"')  # fmt: skip
        first.start(1, wrap=blind)
        first.wait_for(3)
        cmd = import_cmd(tree, served, "matterport", state, "--cluster", first.address, *FLAGS)
        cmd += ["--bwlimit", "2MiB"]
        run = run_import(cmd, served, tmp_path / "blind.log")
        assert run.code == 2, run.output[-3000:]
        line = run.output.strip().splitlines()[-1]
        assert "cannot read" in line and str(tree / "a.e57") in line, line
        assert "every worker must see the files at the same path" in line, line
        worker = line.split("worker ", 1)[1].split(" ", 1)[0]
        assert worker in first.log(first.procs[-1]), (worker, first.log(first.procs[-1]))
        stats = served.stats()
        assert stats["requests"] == 0 and mp(stats)["http_requests"] == 0, stats
        first.kill(first.procs[-1])
        first.wait_for(2)

        # The coordinator killed mid-import; then the scheduler, mid-import of the rerun.
        killed = run_import(cmd, served, tmp_path / "killed.log", stop_when=bytes_after(1 * MiB))
        assert killed.killed, killed.output[-3000:]
        served.wait_idle()
        code, output, seconds = run_killing(
            cmd, served, tmp_path / "lost.log", lambda: first.kill(first.procs[0])
        )
        assert code == 130, output[-3000:]
        assert "the Dask scheduler went away" in output, output[-3000:]
        assert "to resume, rerun:" in output and "Traceback" not in output
        assert seconds < 10, seconds  # a clean exit soon after, not a hang
        first.stop()
        served.wait_idle()
        assert_journal_consistent(state, tree, PART)
        assert mp(served.stats())["committed"] == 0

        # A new cluster: the rerun resumes from the journal, exactly once.
        second.start(2)
        second.wait_for(2)
        final = [*cmd[: cmd.index("--cluster") + 1], second.address, *FLAGS]
        done = run_import(final, served, tmp_path / "final.log", timeout=90)
        assert done.code == 0, done.output[-3000:]
        stats = assert_delivered_once(served, e57, {})
        resent = stats["bytes_received"] - sum(s.size for s in e57.values())
        bound = (2 * 4 + 2 + sum(stats["faults"].values())) * PART
        print(f"\nexternal cluster: re-sent {resent} bytes over two kills; bound {bound}")
        assert 0 <= resent <= bound
    finally:
        first.stop()
        second.stop()
    text = first.all_logs() + second.all_logs()
    assert "Register worker" in text
    for secret in SECRETS:
        assert secret not in text, secret


def run_killing(
    cmd: list[str], served: Served, log: Path, kill: Callable[[], None]
) -> tuple[int, str, float]:
    """Run ``cmd``; once 1 MiB more reached the sandbox, ``kill()`` (something else than the
    run); return its exit code, its output and the seconds from the kill to its exit."""
    before = served.stats()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV)
    try:
        deadline = time.monotonic() + 60
        while not bytes_after(1 * MiB)(before, served.stats(), 0.0):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        kill()
        killed = time.monotonic()
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, log.read_text(), time.monotonic() - killed
