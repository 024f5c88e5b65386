"""``import --workers N``: the parts PUT by Dask worker processes, every platform step once.

Real processes, real HTTP on loopback, no mocks: ``upload-engine sandbox serve`` in its own
process (faults on where counting allows), ``upload-engine import`` as a subprocess that starts
a Dask ``LocalCluster`` of 2 worker processes, and, for the re-run case, the Python API with a
scheduler plugin that kills a worker at the worst moment. What these tests prove (issue 16):

* a tree of E57 and IFC files, faults on (503s, resets, expired URLs presigned again by the
  coordinator), goes through both workers: each E57 committed once with its model, each IFC
  ingested once, stored MD5s equal to the sources'; the report counts each part's bytes once
  per worker; ``--bwlimit`` caps each worker; no signature in any output;
* a worker SIGKILLed mid-import (a few 503s on): the run still exits 0, nothing duplicated, and
  what was sent again is within that worker's parts in flight (plus one part per 503);
* the coordinator SIGKILLed mid-import: its workers go with it, and a rerun of the same
  command resumes from the journal, exactly once;
* a worker killed after its part finished but before the coordinator gathered the answer:
  Dask runs the part again elsewhere (a second PUT of that part only), still exactly once;
* a Ctrl-C in the terminal (SIGINT to the whole group, workers included): the workers finish
  their parts in flight, the run exits 130, a rerun completes with nothing sent twice;
* without the ``cluster`` extra the flags say which extra to install; parsing the command line
  never imports Dask; ``--bwlimit`` caps a plain upload too.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from distributed.diagnostics.plugin import SchedulerPlugin

from engine import KiB, MiB, UploadConfig, Uploader, cli
from engine.cluster import cluster_sender, open_cluster
from engine.cluster.tasks import PartJob
from engine.models import PartRequest, PartSpec
from engine.providers.matterport import Matterport, MatterportCredentials
from engine.sandbox.e57 import write_sample_e57
from tests.functional.test_bulk import (
    BIN,
    ENV,
    ORG,
    Run,
    Served,
    assert_delivered_once,
    assert_journal_consistent,
    assert_no_secrets,
    bytes_after,
    import_cmd,
    md5_file,
    mp,
    run_import,
    stored_objects,
    write_scans,
)

PART = 256 * KiB
CONCURRENCY = 2  # PUTs per worker
WORKERS = 2
FAULTS = "503=0.12,reset=0.1,expired=0.12"
SECRETS = ("X-Signature", "X-Expires", "sandbox-token", "Authorization")
TREE = [
    ("site/a.e57", 1 * MiB + 300 * KiB),
    ("site/rooms/b.e57", 900 * KiB),
    ("c.e57", 300 * KiB),
    ("models/tower.ifc", 200 * KiB),
    ("models/annex.ifc", 90 * KiB),
]


@contextmanager
def sandbox_process(tmp_path: Path, *flags: str) -> Iterator[Served]:
    """``upload-engine sandbox serve`` with 256 KiB parts and ``flags`` (faults, seed)."""
    data = tmp_path / "sandbox-data"
    argv = [BIN, "sandbox", "serve", "--port", "0", "--data-dir", str(data)]
    argv += ["--min-part-size", "256KiB", *flags]
    with (tmp_path / "sandbox.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        found = re.search(r"listening on (http://\S+)", proc.stdout.readline() if ready else "")
        assert found, (tmp_path / "sandbox.log").read_text()
        yield Served(proc, found.group(1), data)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[Served]:
    with sandbox_process(tmp_path, "--faults", FAULTS, "--seed", "16") as served:
        yield served


@pytest.fixture
def mild(tmp_path: Path) -> Iterator[Served]:
    """A few 503s (answered after the whole body): each costs at most one part again."""
    with sandbox_process(tmp_path, "--faults", "503=0.03", "--seed", "16") as served:
        yield served


@pytest.fixture
def clean(tmp_path: Path) -> Iterator[Served]:
    with sandbox_process(tmp_path) as served:
        yield served


def cluster_cmd(tree: Path, served: Served, to: str, state: Path, *extra: str) -> list[str]:
    flags = ["--workers", str(WORKERS), "--concurrency", str(CONCURRENCY)]
    flags += ["--part-size", str(PART), "--stall-timeout", "5"]
    return import_cmd(tree, served, to, state, *flags, *extra)


def workers_of(pid: int) -> list[psutil.Process]:
    """The Dask worker processes a coordinator started (multiprocessing children)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in cmd and "resource_tracker" not in cmd:
            out.append(child)
    return out


def assert_gone(procs: list[psutil.Process], within: float = 10.0) -> None:
    _, alive = psutil.wait_procs(procs, timeout=within)
    assert not alive, f"workers outlived their coordinator: {alive}"


def faults_of(stats: dict[str, Any]) -> int:
    return sum(stats["faults"].values())


def assert_clean_output(run: Run) -> None:
    for secret in SECRETS:
        assert secret not in run.output, secret
    assert "Traceback" not in run.output, run.output[-3000:]


# ----------------------------------------------------------------------------------------------
# 1. A tree through two workers, faults on


@pytest.mark.slow
def test_a_tree_through_two_workers_with_faults_lands_once_each(
    tmp_path: Path, faulty: Served
) -> None:
    tree = tmp_path / "scans"
    scans = write_scans(tree, TREE, seed=1600)
    e57 = {r: s for r, s in scans.items() if r.endswith(".e57")}
    ifc = {r: s for r, s in scans.items() if r.endswith(".ifc")}
    state = tmp_path / "state"
    rate = 2 * MiB  # per worker: both must work for the run to end in time
    for to, files in (("matterport", e57), ("speckle", ifc)):
        report = tmp_path / f"{to}.json"
        cmd = cluster_cmd(tree, faulty, to, state, "--bwlimit", f"{rate}", "--report", str(report))
        run = run_import([*cmd, "--json"], faulty, tmp_path / f"{to}.log", timeout=90)
        assert run.code == 0, run.output[-3000:]
        assert_clean_output(run)
        result = json.loads(report.read_text())
        by_worker = result["workers"]
        total = sum(s.size for s in files.values())
        assert sum(by_worker.values()) == total, by_worker  # each part's bytes once
        if to == "matterport":
            assert len(by_worker) == WORKERS and min(by_worker.values()) >= PART, by_worker
            # capped at `rate` each, they took at least total / (workers * rate) seconds
            assert result["summary"]["seconds"] >= total / (WORKERS * rate) * 0.9
        progress = [json.loads(x) for x in run.output.splitlines() if '"Progress"' in x]
        assert any(p.get("workers") for p in progress), progress[-1:]
    stats = assert_delivered_once(faulty, e57, ifc, spare_ifc_objects=2)
    # every kind was met and survived; an expired URL was presigned again by the coordinator
    assert {k for k, n in stats["faults"].items() if n} == {"503", "reset", "expired"}, stats
    assert_no_secrets(state)


# ----------------------------------------------------------------------------------------------
# 2. A worker killed mid-import


@pytest.mark.slow
def test_a_worker_killed_mid_import_the_run_still_finishes_once(
    tmp_path: Path, mild: Served
) -> None:
    tree = tmp_path / "scans"
    e57 = write_scans(tree, [("big.e57", 3 * MiB), ("small.e57", 1 * MiB)], seed=1610)
    cmd = cluster_cmd(tree, mild, "matterport", tmp_path / "state", "--bwlimit", "3MiB")
    log = tmp_path / "run.log"
    before = mild.stats()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV)
    try:
        deadline = time.monotonic() + 60
        while not bytes_after(1 * MiB)(before, mild.stats(), 0.0):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        victims = workers_of(proc.pid)
        assert len(victims) == WORKERS, victims
        victims[0].kill()
        code = proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output
    stats = assert_delivered_once(mild, e57, {})
    resent = stats["bytes_received"] - sum(s.size for s in e57.values())
    # the worker's parts in flight (one of them may have finished, its answer not yet
    # gathered: Dask runs it again), and one part per 503
    bound = (CONCURRENCY + 1 + faults_of(stats)) * PART
    print(f"\nre-sent {resent} bytes after a worker kill; bound {bound}")
    assert 0 <= resent <= bound


# ----------------------------------------------------------------------------------------------
# 3. The coordinator killed mid-import, then a rerun


@pytest.mark.slow
def test_the_coordinator_killed_mid_import_a_rerun_resumes_exactly_once(
    tmp_path: Path, mild: Served
) -> None:
    tree = tmp_path / "scans"
    e57 = write_scans(tree, [("a.e57", 2 * MiB), ("b.e57", 1 * MiB + 100 * KiB)], seed=1620)
    state = tmp_path / "state"
    cmd = cluster_cmd(tree, mild, "matterport", state, "--bwlimit", "3MiB")
    log = tmp_path / "killed.log"
    before = mild.stats()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV)
    try:
        deadline = time.monotonic() + 60
        while not bytes_after(1 * MiB)(before, mild.stats(), 0.0):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        workers = workers_of(proc.pid)
        assert len(workers) == WORKERS
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_gone(workers)
    mild.wait_idle()
    assert mp(mild.stats())["committed"] == 0
    run = run_import(cmd, mild, tmp_path / "rerun.log", timeout=90)
    assert run.code == 0, run.output[-3000:]
    assert "resuming" in run.output, run.output[-3000:]
    stats = assert_delivered_once(mild, e57, {})
    resent = stats["bytes_received"] - sum(s.size for s in e57.values())
    bound = (WORKERS * CONCURRENCY + faults_of(stats)) * PART
    print(f"\nre-sent {resent} bytes after the coordinator's kill; bound {bound}")
    assert 0 <= resent <= bound
    assert_no_secrets(state)


# ----------------------------------------------------------------------------------------------
# 4. The re-run case: a worker killed after its part finished, before the answer was gathered


class KillOnFinish(SchedulerPlugin):
    """SIGKILLs the worker holding the first upload part to finish, the moment the scheduler
    learns of it: before the coordinator can gather the answer, so Dask must run it again."""

    name = "kill-on-finish"

    def __init__(self) -> None:
        self.killed: list[str] = []
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if self.killed or finish != "memory" or not str(key).startswith("upload-engine-"):
            return
        holder = next(iter(self.scheduler.tasks[key].who_has))
        self.killed.append(str(key))
        os.kill(holder.pid, signal.SIGKILL)


def killed_keys(dask_scheduler: Any) -> list[str]:
    plugin: KillOnFinish = dask_scheduler.plugins[KillOnFinish.name]
    return plugin.killed


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_worker_killed_before_its_answer_was_gathered_still_exactly_once(
    tmp_path: Path, clean: Served
) -> None:
    path = tmp_path / "scan.e57"
    md5 = write_sample_e57(path, 1 * MiB + 200 * KiB, seed=1630)
    # One PUT per worker: when a part finishes, its worker runs nothing else until the
    # coordinator gathers the answer, so the kill re-runs that part alone.
    config = UploadConfig(concurrency=1, part_size=PART, stall_timeout=5)
    matterport = Matterport(
        MatterportCredentials("sandbox-token-id", "sandbox-token-secret"),
        endpoint=f"{clean.url}/api/import/graph",
        poll_interval=0.05,
    )
    async with open_cluster(config=config, workers=WORKERS) as client:
        await client.register_plugin(KillOnFinish())
        async with (
            cluster_sender(client, config) as sender,
            Uploader(config, sender=sender, journal=tmp_path / "journal.jsonl") as up,
        ):
            assert sender.slots == WORKERS
            await sender.check_readable([(path, path.stat().st_size)])
            result = await matterport.import_files(up, [path], organization=ORG)
        killed = await client.run_on_scheduler(killed_keys)
    assert result.model_id
    assert len(killed) == 1, killed
    part = int(killed[0].split("-")[-2])  # upload-engine-<run>-<file>-<part>-<n>
    stats = clean.wait_idle()
    (puts,) = stats["puts_by_part"].values()
    assert puts == {str(n): 2 if n == part else 1 for n in range(1, 6)}, (part, puts)
    assert mp(stats)["committed"] == 1 and mp(stats)["models"] == 1
    assert set(stored_objects(clean.data).values()) == {md5}
    assert md5 == md5_file(path)


# ----------------------------------------------------------------------------------------------
# 5. Without the extra; and no Dask where it was not asked for


def test_cluster_flags_without_the_extra_name_it_and_help_never_imports_dask(
    tmp_path: Path,
) -> None:
    blocked = (
        "import sys; sys.modules['distributed'] = None; from engine.cli import main; "
        "raise SystemExit(main(sys.argv[1:]))"
    )
    (tmp_path / "d").mkdir()
    write_sample_e57(tmp_path / "d" / "a.e57", 64 * KiB, seed=1)
    for flag in (["--workers", "2"], ["--cluster", "tcp://127.0.0.1:1"]):
        argv = [str(tmp_path / "d"), "--to", "sandbox", "--state-dir", str(tmp_path / "s"), *flag]
        done = subprocess.run(
            [sys.executable, "-c", blocked, "import", *argv], capture_output=True, text=True
        )
        assert done.returncode == 2, done.stderr
        assert "pip install 'upload-engine[cluster]'" in done.stderr, done.stderr
        assert flag[0] in done.stderr and "Traceback" not in done.stderr
    probe = (
        "import sys, engine.cli as c; p = c.build_parser(); p.parse_args(['import', '.', "
        "'--to', 'sandbox', '--workers', '2']); print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('distributed', 'dask') or m == 'engine.cluster'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out


# ----------------------------------------------------------------------------------------------
# 6. Ctrl-C in the terminal: the whole foreground group gets SIGINT, the workers included


@pytest.mark.slow
def test_ctrl_c_in_the_terminal_drains_through_the_workers_and_a_rerun_completes(
    tmp_path: Path, mild: Served
) -> None:
    tree = tmp_path / "scans"
    e57 = write_scans(tree, [("a.e57", 1 * MiB + 500 * KiB), ("b.e57", 1 * MiB)], seed=1650)
    state = tmp_path / "state"
    cmd = cluster_cmd(tree, mild, "matterport", state, "--bwlimit", "1MiB")
    log = tmp_path / "ctrl-c.log"
    before = mild.stats()
    with log.open("w") as out:  # its own process group, as a terminal's foreground job
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while not bytes_after(512 * KiB)(before, mild.stats(), 0.0):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        workers = workers_of(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text()
    assert code == 130, output[-3000:]
    assert "stopping: parts in flight get" in output and "to resume, rerun:" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert_gone(workers)
    stats = mild.wait_idle()
    assert stats["disconnects"] == 0, stats  # the workers let their parts in flight finish
    assert_journal_consistent(state, tree, PART)
    run = run_import(cmd, mild, tmp_path / "rerun.log", timeout=90)
    assert run.code == 0, run.output[-3000:]
    stats = assert_delivered_once(mild, e57, {})
    resent = stats["bytes_received"] - sum(s.size for s in e57.values())
    assert 0 <= resent <= faults_of(stats) * PART, (resent, stats["faults"])  # 503s only


# ----------------------------------------------------------------------------------------------
# 7. --bwlimit without a cluster


def test_bwlimit_caps_a_plain_upload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "scan.e57"
    write_sample_e57(path, 1 * MiB, seed=1660)
    rate = 2 * MiB
    started = time.monotonic()
    code = cli.main(
        ["upload", str(path), "--to", "sandbox", "--bwlimit", "2MiB/s", "--part-size", "256KiB"]
    )
    seconds = time.monotonic() - started
    assert code == 0, capsys.readouterr().err
    assert seconds >= path.stat().st_size / rate * 0.9, seconds  # 0.5 s of sending, at least
    assert seconds < 10, seconds


def test_what_dask_may_print_of_a_task_holds_no_signature_and_no_header_value() -> None:
    request = PartRequest(
        url="http://127.0.0.1:1/blob/k?X-Signature=s3cr3t&X-Expires=9",
        headers=(("Authorization", "Bearer t0ken"), ("x-amz-meta-a", "b")),
    )
    job = PartJob(
        "upload-engine-run-0-1-1", "pool", "topic", "/d/a.e57", 10, PartSpec(1, 0, 10),
        request, 4096, True,
    )  # fmt: skip
    for text in (repr(job), str(job), repr((job,))):
        assert "s3cr3t" not in text and "t0ken" not in text and "X-Expires" not in text, text
        assert "upload-engine-run-0-1-1" in text and "Authorization" in text  # names, not values
