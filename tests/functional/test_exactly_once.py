"""Exactly once when the journal, the disk or the file misbehaves: real import subprocesses
against a served sandbox (``upload-engine sandbox serve``), no mocks of either side.

- two imports of one directory at once: the second is refused with the first one's PID;
- the same tree through a symbolic link is the same tree: nothing is imported twice;
- a file rewritten in place (same size, mtime put back) is uploaded again, not skipped; one
  rewritten while its parts are being sent fails as changed instead of being committed mixed;
- a full disk while journaling is one clear line (no ExceptionGroup, no traceback) and the
  journal resumes cleanly once there is room;
- a directory that cannot be read is a failure (exit 2, a local input error), listed with why.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from engine.config import KiB, MiB
from engine.sandbox.e57 import write_sample_e57
from tests.functional.test_bulk import (
    ENV,
    assert_delivered_once,
    by_rel,
    import_cmd,
    in_process_import,
    md5_file,
    mp,
    run_import,
    serve_sandbox,
    stored_objects,
    write_scans,
)

PART = "256KiB"


def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_two_imports_of_one_directory_cannot_run_at_once(tmp_path: Path) -> None:
    tree, state = tmp_path / "scans", tmp_path / "state"
    e57 = write_scans(tree, [("site/a.e57", 3 * MiB)], seed=10)
    with serve_sandbox(tmp_path, "--latency", "0.1") as served:
        cmd = import_cmd(
            tree, served, "matterport", state, "--part-size", PART, "--concurrency", "1"
        )
        with (tmp_path / "first.log").open("w") as log:
            first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV)
        try:
            lock = state / "lock"
            wait_for(
                lambda: lock.is_file() and lock.read_text().strip() == str(first.pid),
                what="the first run's lock",
            )
            second = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=60)
            assert first.poll() is None, "the first run must still be running"
            assert second.returncode == 2, second.stderr
            assert f"in use by another upload-engine run (PID {first.pid})" in second.stderr
            assert "Traceback" not in second.stderr
            assert first.wait(60) == 0, (tmp_path / "first.log").read_text()
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert_delivered_once(served, e57, {})


def test_the_same_tree_through_a_symbolic_link_is_imported_once(tmp_path: Path) -> None:
    real, state = tmp_path / "real", tmp_path / "state"
    e57 = write_scans(real, [("a.e57", 600 * KiB)], seed=20)
    ifc = write_scans(real, [("b/model.ifc", 50 * KiB)], seed=21)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with serve_sandbox(tmp_path) as served:
        for to in ("matterport", "speckle"):
            for root in (real, link):
                run = run_import(
                    import_cmd(root, served, to, state, "--part-size", PART),
                    served,
                    tmp_path / f"{to}-{root.name}.log",
                )
                assert run.code == 0, run.output
        assert_delivered_once(served, e57, ifc)


def rewrite_in_place(path: Path, seed: int) -> str:
    """New bytes at the same size, with the old mtime put back: what ``touch -d`` can hide."""
    before = path.stat()
    md5 = write_sample_e57(path, before.st_size, seed=seed)
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    return md5


def test_a_file_rewritten_in_place_with_its_mtime_restored_is_uploaded_again(
    tmp_path: Path,
) -> None:
    tree, state = tmp_path / "scans", tmp_path / "state"
    (scan,) = write_scans(tree, [("a.e57", 600 * KiB)], seed=30).values()
    with serve_sandbox(tmp_path) as served:
        cmd = import_cmd(tree, served, "matterport", state, "--part-size", PART)
        assert run_import(cmd, served, tmp_path / "1.log").code == 0
        new_md5 = rewrite_in_place(tree / "a.e57", seed=31)
        run = run_import(cmd, served, tmp_path / "2.log")
        assert run.code == 0, run.output
        assert "changed since the last run" in run.output
        stats = served.stats()
        assert mp(stats)["committed"] == 2, mp(stats)
        stored = stored_objects(served.data)
        assert sorted(stored.values()) == sorted([scan.md5, new_md5])


def test_a_file_rewritten_while_its_parts_are_sent_fails_instead_of_committing_mixed(
    tmp_path: Path,
) -> None:
    tree, state = tmp_path / "scans", tmp_path / "state"
    write_scans(tree, [("a.e57", 3 * MiB)], seed=40)
    path = tree / "a.e57"
    with serve_sandbox(tmp_path, "--latency", "0.05") as served:
        cmd = import_cmd(
            tree, served, "matterport", state, "--part-size", PART, "--concurrency", "2"
        )
        with (tmp_path / "1.log").open("w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV)
        try:
            wait_for(lambda: served.stats()["bytes_received"] >= 512 * KiB, what="two parts")
            new_md5 = rewrite_in_place(path, seed=41)
            assert proc.wait(60) == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        output = (tmp_path / "1.log").read_text()
        assert "changed while uploading" in output, output
        assert mp(served.stats())["committed"] == 0  # nothing mixed was committed
        rerun = run_import(cmd, served, tmp_path / "2.log")
        assert rerun.code == 0, rerun.output
        assert mp(served.stats())["committed"] == 1
        assert list(stored_objects(served.data).values()) == [new_md5] == [md5_file(path)]


def _limit_file_size(limit: int) -> Any:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_state_directory_is_one_clear_line_and_the_rerun_resumes(tmp_path: Path) -> None:
    tree, state = tmp_path / "scans", tmp_path / "state"
    e57 = write_scans(tree, [("a.e57", 2 * MiB)], seed=50)
    ifc = write_scans(tree, [("m.ifc", 40 * KiB)], seed=51)
    with serve_sandbox(tmp_path) as served:
        for to in ("matterport", "speckle"):
            cmd = import_cmd(tree, served, to, state, "--part-size", PART)
            journal = state / "journal.jsonl"
            room = (journal.stat().st_size if journal.exists() else 0) + 1500  # a few records
            full = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                env=ENV,
                timeout=60,
                preexec_fn=_limit_file_size(room),
            )
            err = full.stdout + full.stderr
            assert full.returncode != 0, err
            assert "is full" in err and str(state) in err, err
            for noise in ("ExceptionGroup", "Traceback", "internal error"):
                assert noise not in err, err
            assert (state / "journal.jsonl").read_bytes().endswith(b"\n")  # nothing torn
            rerun = run_import(cmd, served, tmp_path / f"{to}-rerun.log")
            assert rerun.code == 0, rerun.output
        assert_delivered_once(served, e57, ifc, spare_ifc_objects=1)


def test_an_unreadable_directory_is_a_failure_listed_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tmp_path / "scans"
    write_scans(tree, [("ok/model.ifc", 20 * KiB), ("locked/hidden.ifc", 20 * KiB)], seed=60)
    locked = tree / "locked"
    if os.geteuid() == 0:  # root reads any directory: refuse as the kernel would for a user
        real_scandir = os.scandir

        def deny(path: Any = ".") -> Any:
            if Path(os.fspath(path)) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", deny)
    else:
        locked.chmod(0)
    report = tmp_path / "report.json"
    try:
        code = in_process_import(
            [str(tree), "--to", "sandbox", "--state-dir", str(tmp_path / "state")],
            ["--report", str(report)],
        )
    finally:
        locked.chmod(0o755)
    out = capsys.readouterr()
    assert code == 2, out.err  # a local input error in the exit-code table; never 0
    files = by_rel(json.loads(report.read_text()), tree)
    assert files["locked"]["status"] == "failed", files
    assert "cannot read this directory: Permission denied" in files["locked"]["error"]
    assert files["ok/model.ifc"]["status"] == "ok"
