"""``upload-engine import DIR`` end to end: real processes, real HTTP on loopback, no mocks.

What these tests prove (issue 5, "Done when"):

* a generated tree (nested folders, E57 and IFC files of mixed sizes, a non-scan file, an empty
  file, a file with a wrong header, a FIFO, a dangling link, a symlink loop and a directory link
  loop) imported into the in-process sandbox for both platforms, with faults on, reports each
  file's status, exits 1 (0 with only valid files), and every uploaded file's MD5 in the sandbox
  equals the source's; ``--group-by folder`` makes one Matterport session per folder and
  ``--model NAME`` one Speckle model for all;
* ``--dry-run`` prints the plan and sends nothing;
* an import subprocess killed with SIGKILL at several points, then rerun until it exits 0,
  delivers every file exactly once (one committed session and model per E57, one ingestion and
  version per IFC, MD5s equal) and re-sends at most the parts in flight at each kill;
* with many files at once, the blob store never has more PUTs in flight than ``--concurrency``;
* one Ctrl-C stops cleanly (exit 130, how to resume, a consistent journal) and a rerun re-sends
  nothing; a Ctrl-C during a wait for the platform stops at once, and a rerun still completes;
* a file changed between runs is reported and restarted, or refused with ``--on-change refuse``.

The sandbox runs as its own process (``upload-engine sandbox serve``) where it must outlive the
import; its bytes stay in a data directory, and MD5s are taken from the stored objects there.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from engine import cli
from engine.config import KiB, MiB
from engine.journal import replay
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.ifc import write_sample_ifc
from engine.units import human_bytes

BIN = str(Path(sys.executable).with_name("upload-engine"))
ORG = "sandbox-org"
PROJECT = "sandbox-project"
ENV = {
    **os.environ,
    "MATTERPORT_TOKEN_ID": "sandbox-token-id",
    "MATTERPORT_TOKEN_SECRET": "sandbox-token-secret",
    "SPECKLE_TOKEN": "sandbox-token",
}
SERVE_FLAGS = ("--min-part-size", "256KiB")  # the smallest part (blob store and Matterport)
FAULTS = ("--sandbox-faults", "503=0.1,reset=0.05")
POLL = 0.005  # seconds between looks at the sandbox's counters while an import runs


# ----------------------------------------------------------------------------------------------
# Trees


@dataclass(frozen=True)
class Scan:
    rel: str
    size: int
    md5: str


def write_scans(root: Path, spec: Sequence[tuple[str, int]], *, seed: int) -> dict[str, Scan]:
    """Valid E57/IFC samples at ``root/rel`` (sizes in bytes; E57 rounds up to whole pages)."""
    out: dict[str, Scan] = {}
    for i, (rel, size) in enumerate(spec):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = write_sample_e57 if rel.lower().endswith(".e57") else write_sample_ifc
        md5 = writer(path, size, seed=seed + i)
        out[rel] = Scan(rel, path.stat().st_size, md5)
    return out


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1 * MiB):
            h.update(chunk)
    return h.hexdigest()


def stored_objects(data_dir: Path) -> dict[str, str]:
    """Every object the sandbox's blob store holds: key -> MD5 of its bytes on disk."""
    objects = data_dir / "objects"
    if not objects.is_dir():
        return {}
    return {unquote(p.name): md5_file(p) for p in sorted(objects.iterdir())}


def md5s_under(objects: dict[str, str], prefix: str) -> Counter[str]:
    return Counter(md5 for key, md5 in objects.items() if key.startswith(prefix))


def by_rel(report: dict[str, Any], root: Path) -> dict[str, dict[str, Any]]:
    return {Path(f["path"]).relative_to(root).as_posix(): f for f in report["files"]}


# ----------------------------------------------------------------------------------------------
# The served sandbox and import subprocesses


@dataclass
class Served:
    """``upload-engine sandbox serve`` in its own process; its data directory is ``data``."""

    proc: subprocess.Popen[str]
    url: str
    data: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_sandbox/stats", timeout=10) as r:
            stats: dict[str, Any] = json.loads(r.read())
        return stats

    def wait_idle(self, timeout: float = 10.0) -> dict[str, Any]:
        """Counters once no PUT is in flight (the server has seen a killed client's drop)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["puts_in_flight"] == 0 or time.monotonic() > deadline:
                return stats
            time.sleep(0.02)

    def args(self, to: str) -> list[str]:
        if to == "matterport":
            endpoint = f"{self.url}/api/import/graph"
            return ["--to", "matterport", "--organization", ORG, "--endpoint", endpoint]
        return ["--to", "speckle", "--project", PROJECT, "--server", self.url]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve_sandbox(tmp_path) as s:
        yield s


@contextmanager
def serve_sandbox(tmp_path: Path, *flags: str) -> Iterator[Served]:
    """``upload-engine sandbox serve`` in its own process, with ``SERVE_FLAGS`` and ``flags``."""
    data = tmp_path / "sandbox-data"
    with (tmp_path / "sandbox.log").open("w") as log:
        proc = subprocess.Popen(
            [BIN, "sandbox", "serve", "--port", "0", "--data-dir", str(data), *SERVE_FLAGS, *flags],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            line = proc.stdout.readline() if ready else ""
            found = re.search(r"listening on (http://\S+)", line)
            assert found, f"the sandbox did not start: {line!r}"
            yield Served(proc, found.group(1), data)
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()


@dataclass
class Run:
    """One finished import subprocess."""

    code: int
    output: str
    killed: bool = False
    seconds: float = 0.0
    in_flight: int = 0  # the blob store's PUTs in flight just before a kill
    stopped_in: float = 0.0  # seconds from the signal to the exit


def import_cmd(tree: Path, served: Served, to: str, state: Path, *extra: str) -> list[str]:
    return [BIN, "import", str(tree), *served.args(to), "--state-dir", str(state), *extra]


Predicate = Callable[[dict[str, Any], dict[str, Any], float], bool]


def run_import(
    cmd: list[str],
    served: Served,
    log: Path,
    *,
    stop_when: Predicate | None = None,
    sig: int = signal.SIGKILL,
    delay: float = 0.0,
    timeout: float = 40.0,
) -> Run:
    """Run ``cmd``; when ``stop_when(before, now, elapsed)`` holds, wait ``delay`` s, send
    ``sig``. ``before``/``now`` are the sandbox's counters at the start and now."""
    before = served.stats()
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV, text=True)
    run = Run(code=-1, output="")
    signalled = 0.0
    try:
        while stop_when is not None and proc.poll() is None:
            elapsed = time.monotonic() - started
            assert elapsed < timeout, f"no stop point within {timeout} s: {cmd}"
            now = served.stats()
            if stop_when(before, now, elapsed):
                if delay:
                    time.sleep(delay)
                if proc.poll() is None:
                    run.in_flight = served.stats()["puts_in_flight"]
                    proc.send_signal(sig)
                    run.killed = True
                    signalled = time.monotonic()
                break
            time.sleep(POLL)
        run.code = proc.wait(timeout)
        if run.killed:
            run.stopped_in = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run.seconds = time.monotonic() - started
    run.output = log.read_text()
    return run


def mp(stats: dict[str, Any]) -> dict[str, Any]:
    plane: dict[str, Any] = stats["planes"]["matterport"]
    return plane


def sp(stats: dict[str, Any]) -> dict[str, Any]:
    plane: dict[str, Any] = stats["planes"]["speckle"]
    return plane


def bytes_after(n: int) -> Predicate:
    return lambda before, now, _: now["bytes_received"] - before["bytes_received"] >= n


def mp_calls_after(name: str) -> Predicate:
    return lambda before, now, _: mp(now)["calls"].get(name, 0) > mp(before)["calls"].get(name, 0)


def sp_calls_after(name: str) -> Predicate:
    return lambda before, now, _: sp(now)["calls"].get(name, 0) > sp(before)["calls"].get(name, 0)


def seconds_after(t: float) -> Predicate:
    return lambda _before, _now, elapsed: elapsed >= t


def assert_delivered_once(
    served: Served, e57: dict[str, Scan], ifc: dict[str, Scan], *, spare_ifc_objects: int = 0
) -> dict[str, Any]:
    """Every E57 in one committed session with its model, every IFC in one ingestion with its
    version, no duplicate, every stored object's MD5 equal to its source's."""
    stats = served.stats()
    assert mp(stats)["committed"] == len(e57), mp(stats)
    assert mp(stats)["models"] == len(e57), mp(stats)
    assert mp(stats)["failed"] == 0, mp(stats)
    assert sp(stats)["versions"] == len(ifc), sp(stats)
    assert sp(stats)["ingestions"] == ({"success": len(ifc)} if ifc else {}), sp(stats)
    objects = stored_objects(served.data)
    assert md5s_under(objects, "import/") == Counter(s.md5 for s in e57.values())
    speckle = md5s_under(objects, "speckle/")
    assert set(speckle) == {s.md5 for s in ifc.values()}
    assert sum(speckle.values()) <= len(ifc) + spare_ifc_objects, speckle
    return stats


# ----------------------------------------------------------------------------------------------
# 1. A messy tree into the in-process sandbox, faults on, both platforms


MESSY = [
    ("a/scan-big.e57", 12 * MiB),
    ("a/model-a.ifc", 3 * MiB),
    ("a/b/scan-mid.e57", 6 * MiB),
    ("a/b/c/scan-small.e57", 64 * KiB),
    ("c/site.e57", 8 * MiB),
    ("c/site-2.e57", 2 * MiB),
    ("c/d/model-b.ifc", 200 * KiB),
    ("c/d/MODEL-C.IFC", 90 * KiB),
]
INVALID = {  # rel -> (status, reason) in the report
    "c/empty.e57": ("failed", "empty file"),
    "c/fake.e57": ("failed", "not an E57 file"),
    "a/x.e57": ("failed", "not a regular file"),
    "c/loop.e57": ("failed", "symlink loop"),
    "c/gone.ifc": ("failed", "No such file"),
}
SKIPPED = {
    "notes/readme.txt": "not a scan (.txt)",
    "a/b/up": "symlinked directory not followed",
}


def messy_tree(root: Path) -> dict[str, Scan]:
    scans = write_scans(root, MESSY, seed=100)
    (root / "notes").mkdir()
    (root / "notes/readme.txt").write_text("site notes\n")
    (root / "c/empty.e57").touch()
    (root / "c/fake.e57").write_bytes(b"not a scan at all\n" * 100)
    os.mkfifo(root / "a/x.e57")  # even root cannot read a FIFO without a writer
    (root / "c/loop.e57").symlink_to("loop.e57")  # ELOOP, for root too
    (root / "c/gone.ifc").symlink_to("nowhere.ifc")
    (root / "a/b/up").symlink_to("..")  # a directory loop: never followed
    return scans


def in_process_import(*argv: Sequence[str]) -> int:
    """``upload-engine import`` in this process (anyio runs its own loop on this thread)."""
    return cli.main(["import", *(a for args in argv for a in args)])


@pytest.mark.slow
def test_messy_tree_into_the_in_process_sandbox_with_faults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tmp_path / "scans"
    scans = messy_tree(tree)
    e57 = {r: s for r, s in scans.items() if r.endswith(".e57")}
    ifc = {r: s for r, s in scans.items() if not r.endswith(".e57")}
    state, report_path = tmp_path / "state", tmp_path / "report.json"

    common = [str(tree), "--to", "sandbox", *FAULTS, "--part-size", "5MiB"]
    code = in_process_import(
        [*common, "--concurrency", "4", "--files-at-once", "3"],
        ["--state-dir", str(state), "--report", str(report_path)],
    )
    out = capsys.readouterr()
    assert code == 2, out.err[-3000:]  # the invalid files: local input errors (exit 2)
    assert state.stat().st_mode & 0o777 == 0o700
    report = json.loads(report_path.read_text())
    files = by_rel(report, tree)
    for rel, (status, reason) in INVALID.items():
        assert files[rel]["status"] == status, files[rel]
        assert reason in files[rel]["error"], files[rel]
    for rel, reason in SKIPPED.items():
        assert (files[rel]["status"], files[rel]["reason"]) == ("skipped", reason)
    for rel, scan in scans.items():
        f = files[rel]
        assert f["status"] == "ok", f
        assert f["bytes"] == scan.size
        if rel in e57:
            assert f["platform"] == "matterport" and f["session_id"] and f["model_id"], f
        else:
            assert f["platform"] == "speckle" and f["version_id"] and f["model_id"], f
    assert set(files) == set(scans) | set(INVALID) | set(SKIPPED)
    summary = report["summary"]
    assert (summary["ok"], summary["failed"], summary["skipped"]) == (len(scans), 5, 2)
    assert summary["bytes"] == sum(s.size for s in scans.values())

    # Every uploaded file's bytes, as the sandbox stored them, have the source's MD5.
    objects = stored_objects(state / "sandbox")
    sessions = {files[rel]["session_id"] for rel in e57}
    assert len(sessions) == len(e57)  # one session (one model) per file by default
    for rel, scan in e57.items():
        assert md5s_under(objects, f"import/{files[rel]['session_id']}/") == {scan.md5: 1}
    assert md5s_under(objects, "speckle/") == Counter(s.md5 for s in ifc.values())
    assert len({files[rel]["model_id"] for rel in ifc}) == len(ifc)  # a model per file
    assert len(objects) == len(scans)

    # Only valid files (the others excluded): exit 0; one session per folder, one model.
    state2, report2 = tmp_path / "state2", tmp_path / "report2.json"
    excludes = [x for rel in INVALID for x in ("--exclude", rel)]
    code = in_process_import(
        [*common, *excludes, "--group-by", "folder", "--model", "site-models"],
        ["--state-dir", str(state2), "--report", str(report2)],
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    files = by_rel(json.loads(report2.read_text()), tree)
    for rel in INVALID:
        assert files[rel]["status"] == "skipped"
        assert files[rel]["reason"] == "matched by --exclude"
    assert all(files[rel]["status"] == "ok" for rel in scans)
    folders: dict[str, set[str]] = {}
    for rel in e57:
        folders.setdefault(str(Path(rel).parent), set()).add(files[rel]["session_id"])
    assert all(len(ids) == 1 for ids in folders.values()), folders
    assert len({files[rel]["session_id"] for rel in e57}) == len(folders) == 4
    assert files["c/site.e57"]["session_id"] == files["c/site-2.e57"]["session_id"]
    assert files["c/site.e57"]["model_id"] == files["c/site-2.e57"]["model_id"]
    assert len({files[rel]["model_id"] for rel in ifc}) == 1  # --model: one model for all
    assert len({files[rel]["version_id"] for rel in ifc}) == len(ifc)
    objects = stored_objects(state2 / "sandbox")
    for sessions_of_folder in folders.values():
        (sid,) = sessions_of_folder
        in_session = [s for rel, s in e57.items() if files[rel]["session_id"] == sid]
        assert md5s_under(objects, f"import/{sid}/") == Counter(s.md5 for s in in_session)
    assert md5s_under(objects, "speckle/") == Counter(s.md5 for s in ifc.values())


# ----------------------------------------------------------------------------------------------
# 2. --dry-run


def test_dry_run_prints_the_plan_and_sends_nothing(tmp_path: Path, served: Served) -> None:
    tree = tmp_path / "scans"
    scans = write_scans(tree, [("a/one.e57", 11 * MiB), ("b/two.ifc", 100 * KiB)], seed=200)
    (tree / "b/empty.e57").touch()
    state = tmp_path / "state"
    # file, platform, group, size, parts (Matterport decides its part limits when asked)
    rows = {
        "matterport": ("a/one.e57", "matterport", "a/one.e57", "11.0 MiB", "server decides"),
        "speckle": ("b/two.ifc", "speckle", "b/two.ifc", "100.0 KiB", "1"),
    }
    for to, row in rows.items():
        cmd = import_cmd(tree, served, to, state, "--dry-run", "--part-size", "1MiB")
        run = run_import(cmd, served, tmp_path / f"dry-{to}.log")
        assert run.code == 0, run.output
        # piped: a plain table, columns two spaces or more apart, no box drawing
        plain = r"\s{2,}".join(map(re.escape, row)) + r"$"
        assert re.search(plain, run.output, re.MULTILINE), run.output
        assert "│" not in run.output
        size = human_bytes(scans[row[0]].size)
        assert f"1 file in 1 upload, {size}; nothing sent" in run.output
    assert "failed: b/empty.e57: empty file" in (tmp_path / "dry-matterport.log").read_text()
    assert "skipped: b/empty.e57: .e57 files go to matterport" in run.output
    stats = served.stats()
    assert stats["requests"] == 0
    assert mp(stats)["http_requests"] == 0
    assert sp(stats)["requests"] == 0
    assert not state.exists()


# ----------------------------------------------------------------------------------------------
# 3. SIGKILL at several points, rerun until done: exactly once, bounded re-sending


# Big files, small parts: resuming from scratch would re-send far more than the bound allows.
CRASH_E57 = [
    ("big/site-a.e57", 12 * MiB),
    ("big/site-b.e57", 8 * MiB),
    ("rooms/deep/r3.e57", 4 * MiB),
    ("rooms/r1.e57", 2 * MiB),
    ("rooms/r2.e57", 1 * MiB),
]
CRASH_IFC = [("models/a.ifc", 250 * KiB), ("models/b.ifc", 200 * KiB), ("c.ifc", 100 * KiB)]
CRASH_PART = 256 * KiB
CRASH_CONCURRENCY = 3


@dataclass
class CrashLog:
    kills: list[tuple[str, int]] = field(default_factory=list)  # (point, PUTs in flight)
    missed: list[str] = field(default_factory=list)  # the run finished before the point
    runs: int = 0


def crash_until_done(
    tree: Path,
    served: Served,
    to: str,
    state: Path,
    logs: Path,
    points: Sequence[tuple[str, Predicate, float]],
    record: CrashLog,
) -> Run:
    cmd = import_cmd(
        tree,
        served,
        to,
        state,
        "--part-size",
        str(CRASH_PART),
        "--concurrency",
        str(CRASH_CONCURRENCY),
        "--files-at-once",
        "2",
    )
    for label, when, delay in points:
        record.runs += 1
        run = run_import(cmd, served, logs / f"{to}-{record.runs}.log", stop_when=when, delay=delay)
        if run.killed:
            assert run.code == -signal.SIGKILL
            record.kills.append((f"{to}: {label}", run.in_flight))
        else:
            record.missed.append(f"{to}: {label}")
        served.wait_idle()
    for _ in range(4):
        record.runs += 1
        report = logs / f"{to}-report.json"
        run = run_import([*cmd, "--report", str(report)], served, logs / f"{to}-{record.runs}.log")
        if run.code == 0:
            return run
    raise AssertionError(f"{to}: no clean run after the kills:\n{run.output[-3000:]}")


@pytest.mark.slow
def test_sigkill_at_several_points_then_rerun_delivers_each_file_once(
    tmp_path: Path, served: Served
) -> None:
    tree = tmp_path / "scans"
    e57 = write_scans(tree, CRASH_E57, seed=300)
    ifc = write_scans(tree, CRASH_IFC, seed=400)
    assert all(s.size <= CRASH_PART for s in ifc.values())  # one PUT each, at most a part
    state, logs = tmp_path / "state", tmp_path / "logs"
    logs.mkdir()
    rng = random.Random(5)
    record = CrashLog()
    started = time.monotonic()

    crash_until_done(
        tree,
        served,
        "matterport",
        state,
        logs,
        [
            ("mid-upload of the two big files", bytes_after(4 * MiB), 0.0),
            ("mid-upload, seeded", bytes_after(int(rng.uniform(3.0, 6.0) * MiB)), 0.0),
            ("right after a file's completeUpload", mp_calls_after("completeUpload"), 0.0),
            ("during the wait for a model", mp_calls_after("commitImportSession"), 0.3),
            ("at a seeded random instant", seconds_after(rng.uniform(0.3, 1.2)), 0.0),
        ],
        record,
    )
    crash_until_done(
        tree,
        served,
        "speckle",
        state,
        logs,
        [
            ("right after generateUploadUrl", sp_calls_after("generateUploadUrl"), 0.0),
            ("during the ingestion wait", sp_calls_after("startFileIngestion"), 0.1),
            ("at a seeded random instant", seconds_after(rng.uniform(0.3, 1.0)), 0.0),
        ],
        record,
    )
    assert served.proc.poll() is None, "the sandbox must outlive the kills"
    assert_no_secrets(state)
    assert len(record.kills) >= 5, record

    stats = assert_delivered_once(served, e57, ifc, spare_ifc_objects=len(record.kills))
    sizes = sum(s.size for s in e57.values()) + sum(s.size for s in ifc.values())
    resent = stats["bytes_received"] - sizes
    bound = len(record.kills) * CRASH_CONCURRENCY * CRASH_PART
    print(
        f"\nkills: {record.kills}\nmissed: {record.missed}\nruns: {record.runs}, "
        f"{time.monotonic() - started:.1f} s; re-sent {resent} bytes, bound {bound}; "
        f"matterport sessions {mp(stats)['sessions']}, committed {mp(stats)['committed']}"
    )
    assert 0 <= resent <= bound
    assert stats["max_puts_in_flight"] <= CRASH_CONCURRENCY
    for to, scans in (("matterport", e57), ("speckle", ifc)):
        files = by_rel(json.loads((logs / f"{to}-report.json").read_text()), tree)
        # done by the last run, or confirmed by the server as done by a killed one
        ends = {(files[rel]["status"], files[rel].get("reason")) for rel in scans}
        assert ends <= {("ok", None), ("skipped", "already uploaded")}, files
    files = by_rel(json.loads((logs / "matterport-report.json").read_text()), tree)
    sent = [rel for rel in e57 if files[rel]["status"] == "ok"]
    assert len({files[rel]["session_id"] for rel in sent}) == len(sent)
    assert len({files[rel]["model_id"] for rel in sent}) == len(sent)


# ----------------------------------------------------------------------------------------------
# 4. One budget: many files at once, never more PUTs in flight than --concurrency


def _established_to(port: int) -> int:
    """Client-side TCP connections to ``port`` on loopback that are ESTABLISHED now."""
    count = 0
    with Path("/proc/net/tcp").open() as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


@pytest.mark.slow
def test_many_files_at_once_stay_within_the_connection_budget(
    tmp_path: Path, served: Served
) -> None:
    tree = tmp_path / "scans"
    spec = [(f"batch-{i // 10}/scan-{i:02d}.e57", 1 * MiB) for i in range(30)]
    e57 = write_scans(tree, spec, seed=500)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _established_to(served.port))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        cmd = import_cmd(tree, served, "matterport", tmp_path / "state")
        cmd += ["--files-at-once", "10", "--concurrency", "3", "--part-size", "512KiB"]
        run = run_import(cmd, served, tmp_path / "import.log", timeout=60)
    finally:
        done.set()
        sampler.join()
    assert run.code == 0, run.output
    stats = assert_delivered_once(served, e57, {})
    print(
        f"\nmax PUTs in flight {stats['max_puts_in_flight']} (budget 3); "
        f"peak ESTABLISHED connections to the sandbox {peak} (3 data + at most 8 control)"
    )
    assert 1 < stats["max_puts_in_flight"] <= 3
    assert sum(len(parts) for parts in stats["puts_by_part"].values()) == 30 * 2
    # data connections are capped at --concurrency, control-plane ones at 8 (their own pool)
    assert 0 < peak <= 3 + 8


# ----------------------------------------------------------------------------------------------
# 5. Ctrl-C


def journal_lines(state: Path) -> list[bytes]:
    return (state / "journal.jsonl").read_bytes().splitlines()


def assert_no_secrets(state: Path) -> None:
    """The journal holds no token (id, secret or bearer) and no presigned URL."""
    text = (state / "journal.jsonl").read_text()
    for secret in ("sandbox-token", "Authorization", "X-Signature", "X-Expires", "/blob/"):
        assert secret not in text


def assert_journal_consistent(state: Path, tree: Path, part: int) -> int:
    """Every line whole; no secret; each journaled part's ETag is the MD5 of that range of
    its file. Returns the number of journaled parts."""
    lines = journal_lines(state)
    for line in lines:
        assert isinstance(json.loads(line), dict)
    assert_no_secrets(state)
    fingerprints = {
        json.loads(line)["key"]: json.loads(line)["fp"]["path"]
        for line in lines
        if json.loads(line)["op"] == "begin"
    }
    count = 0
    for key, st in replay(lines).items():
        if key not in fingerprints:
            continue
        data = Path(fingerprints[key]).read_bytes()
        assert Path(fingerprints[key]).is_relative_to(tree)
        for n, result in st.parts.items():
            chunk = data[(n - 1) * part : (n - 1) * part + result.size]
            assert result.size == len(chunk)
            assert result.etag.strip('"') == hashlib.md5(chunk, usedforsecurity=False).hexdigest()
            count += 1
    return count


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_mid_upload_and_at_once_in_a_wait_and_reruns_complete(
    tmp_path: Path, served: Served
) -> None:
    part = 256 * KiB
    one = write_scans(tmp_path / "one", [(f"s{i}.e57", 4 * MiB) for i in range(3)], seed=600)
    two = write_scans(tmp_path / "two", [(f"t{i}.e57", 1 * MiB) for i in range(2)], seed=700)
    flags = ["--part-size", "256KiB", "--concurrency", "3", "--files-at-once", "3"]

    # One SIGINT midway: in-flight parts finish, exit 130 with how to resume.
    state = tmp_path / "state-one"
    cmd = import_cmd(tmp_path / "one", served, "matterport", state, *flags)
    run = run_import(
        cmd, served, tmp_path / "one-1.log", stop_when=bytes_after(1 * MiB), sig=signal.SIGINT
    )
    assert run.killed and run.code == 130, run.output
    assert run.stopped_in < 3.0, run.stopped_in  # not the whole 5 s grace: nothing was left
    assert "stopping: parts in flight get 5 s" in run.output
    assert "to resume, rerun:" in run.output and "--state-dir" in run.output
    assert "interrupted" in run.output
    stats = served.wait_idle()
    assert stats["puts_in_flight"] == 0
    journaled = assert_journal_consistent(state, tmp_path / "one", part)
    assert 0 < journaled < 3 * 16
    assert mp(stats)["committed"] == 0
    interrupted_after = run.stopped_in
    run = run_import(cmd, served, tmp_path / "one-2.log")
    assert run.code == 0, run.output
    stats = assert_delivered_once(served, one, {})
    # The first Ctrl-C let every part in flight finish: the rerun sent each part exactly once.
    assert stats["bytes_received"] == sum(s.size for s in one.values())
    assert all(n == 1 for parts in stats["puts_by_part"].values() for n in parts.values())

    # One SIGINT while the import waits for its model: every wait honours a graceful stop at
    # once (nothing is in flight to finish), so it exits at once, resumable.
    state = tmp_path / "state-two"
    cmd = import_cmd(tmp_path / "two", served, "matterport", state, *flags, "--grace", "30")
    before = served.stats()
    log = tmp_path / "two-1.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV)
    try:
        while not mp_calls_after("commitImportSession")(before, served.stats(), 0.0):
            assert proc.poll() is None, log.read_text()
            time.sleep(POLL)
        time.sleep(0.2)  # past the first poll: now sleeping until the next one
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        code = proc.wait(20)
        stopped_in = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert code == 130, output
    assert stopped_in < 1.0, stopped_in
    assert "to resume, rerun:" in output
    served.wait_idle()
    assert_journal_consistent(state, tmp_path / "two", part)
    run = run_import(cmd, served, tmp_path / "two-2.log")
    assert run.code == 0, run.output
    stats = assert_delivered_once(served, {**one, **two}, {})
    resent = stats["bytes_received"] - sum(s.size for s in [*one.values(), *two.values()])
    assert 0 <= resent <= 3 * part
    print(
        f"\nCtrl-C mid-upload: exit {interrupted_after:.2f} s later; in a wait: {stopped_in:.2f} s"
    )


# ----------------------------------------------------------------------------------------------
# 6. A file changed between runs


@pytest.mark.slow
def test_a_file_changed_between_runs_is_restarted_or_refused(
    tmp_path: Path, served: Served
) -> None:
    tree = tmp_path / "scans"
    scans = write_scans(
        tree, [("scan.e57", 4 * MiB), ("keep.e57", 1 * MiB), ("plan.ifc", 300 * KiB)], seed=800
    )
    state, logs = tmp_path / "state", tmp_path
    flags = ["--part-size", "256KiB", "--concurrency", "2"]
    mp_cmd = import_cmd(tree, served, "matterport", state, *flags)
    sp_cmd = import_cmd(tree, served, "speckle", state, *flags)

    # Matterport: killed mid-upload; Speckle: done.
    run = run_import(mp_cmd, served, logs / "mp-1.log", stop_when=bytes_after(1 * MiB))
    assert run.killed
    served.wait_idle()
    assert run_import(sp_cmd, served, logs / "sp-1.log").code == 0

    # Both files change (same size, new bytes, new mtime).
    write_sample_e57(tree / "scan.e57", 4 * MiB, seed=900)
    write_sample_ifc(tree / "plan.ifc", 300 * KiB, seed=901)
    new_scan, new_plan = md5_file(tree / "scan.e57"), md5_file(tree / "plan.ifc")
    for cmd, rel in ((mp_cmd, "scan.e57"), (sp_cmd, "plan.ifc")):
        run = run_import([*cmd, "--dry-run"], served, logs / "dry.log")
        assert f"changed since the last run: {rel}: restarted" in run.output, run.output
        assert "keep.e57: restarted" not in run.output

    for cmd, rel, name in ((mp_cmd, "scan.e57", "mp"), (sp_cmd, "plan.ifc", "sp")):
        report = logs / f"{name}-refuse.json"
        run = run_import(
            [*cmd, "--on-change", "refuse", "--report", str(report)],
            served,
            logs / f"{name}-refuse.log",
        )
        assert run.code == 1, run.output
        f = by_rel(json.loads(report.read_text()), tree)[rel]
        assert f["status"] == "failed" and "changed" in f["error"], f
        assert "--on-change restart" in f["error"]

    for cmd, rel, name in ((mp_cmd, "scan.e57", "mp"), (sp_cmd, "plan.ifc", "sp")):
        report = logs / f"{name}-restart.json"
        run = run_import([*cmd, "--report", str(report)], served, logs / f"{name}-restart.log")
        assert run.code == 0, run.output
        assert re.search(rf"{re.escape(Path(rel).name)}: changed since the last run", run.output), (
            run.output
        )
        f = by_rel(json.loads(report.read_text()), tree)[rel]
        assert f["status"] == "ok", f
        assert f.get("changed") is True, f

    objects = stored_objects(served.data)
    assert new_scan in md5s_under(objects, "import/")
    assert scans["scan.e57"].md5 not in md5s_under(objects, "import/")  # never completed
    assert md5s_under(objects, "speckle/") == Counter([scans["plan.ifc"].md5, new_plan])
    stats = served.stats()
    assert mp(stats)["committed"] == 2  # scan.e57 (new bytes) and keep.e57, once each
    assert sp(stats)["versions"] == 2  # plan.ifc before and after the change
