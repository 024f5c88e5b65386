"""The journal: replay is pure, torn writes are ignored, changed files restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from engine import FileInfo, PartResult, SourceChangedError
from engine.errors import StateError
from engine.journal import (
    FileAdded,
    Journal,
    JournalKey,
    Mark,
    MultipartStarted,
    PartLimitsKnown,
    SessionOpened,
    replay,
    s3_key,
)


def test_replay_rebuilds_facts_parts_marks_and_done(tmp_path: Path) -> None:
    f = tmp_path / "a.e57"
    f.write_bytes(b"x" * 10)
    info = FileInfo.of(f)
    key = JournalKey("matterport-file", ("https://api", "s1", info.key))
    j = Journal(tmp_path / "state" / "journal.jsonl")
    fj = j.for_key(key)
    assert fj.begin(info) is False  # new, not changed
    fj.record(FileAdded("s1", "file1", "e57-1", "f1"))
    fj.record(PartLimitsKnown(5, 1024))
    fj.part_done(PartResult(1, '"aa"', 5))
    fj.part_done(PartResult(2, '"bb"', 5))
    fj.mark(Mark.COMMIT_REQUESTED)
    j.close()
    again = Journal(tmp_path / "state" / "journal.jsonl")
    fj = again.for_key(key)
    assert fj.begin(info) is False
    st = fj.state
    assert st.get(FileAdded) == FileAdded("s1", "file1", "e57-1", "f1")
    limits = st.get(PartLimitsKnown)
    assert limits == PartLimitsKnown(5, 1024) and isinstance(limits.min_size, int)
    assert st.get(MultipartStarted) is None
    assert sorted(st.parts) == [1, 2] and st.parts[2].etag == '"bb"'
    assert Mark.COMMIT_REQUESTED in st.marks and st.done is None
    again.close()
    assert (tmp_path / "state" / "journal.jsonl").stat().st_mode & 0o777 == 0o600


def test_a_torn_last_line_is_ignored() -> None:
    lines = [
        orjson.dumps({"op": "begin", "key": "k", "fp": {"size": 1}}),
        orjson.dumps({"op": "part", "key": "k", "n": 1, "etag": "e", "size": 1}),
        b'{"op": "part", "key": "k", "n": 2, "et',
    ]
    assert list(replay(lines)["k"].parts) == [1]


def test_a_fresh_fact_voids_earlier_facts_parts_and_marks() -> None:
    def fact(tag: str, data: dict[str, object]) -> bytes:
        return orjson.dumps({"op": "fact", "key": "k", "type": tag, "data": data})

    lines = [
        orjson.dumps({"op": "begin", "key": "k", "fp": {}}),
        fact("matterport.limits", {"min_size": 5, "max_size": 9}),
        orjson.dumps({"op": "part", "key": "k", "n": 1, "etag": "e", "size": 1}),
        orjson.dumps({"op": "mark", "key": "k", "name": "committed"}),
        fact("s3.multipart", {"bucket": "b", "key": "o", "upload_id": "u2"}),
    ]
    st = replay(lines)["k"]
    assert st.parts == {} and st.marks == set() and st.get(PartLimitsKnown) is None
    assert st.get(MultipartStarted) == MultipartStarted("b", "o", "u2")


def test_session_files_are_a_json_object_not_a_string(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.jsonl")
    j.for_key("k").record(SessionOpened("s1", {"/scans/a.e57": [10, 123]}))
    j.close()
    line = orjson.loads((tmp_path / "j.jsonl").read_bytes())
    assert line["data"] == {"session_id": "s1", "files": {"/scans/a.e57": [10, 123]}}


def test_keys_hold_the_destination_and_cannot_be_confused(tmp_path: Path) -> None:
    f = tmp_path / "a:b|c.e57"
    f.write_bytes(b"x")
    info = FileInfo.of(f)
    one = s3_key("http://a", "bucket", "k", info)
    other = s3_key("http://b", "bucket", "k", info)
    assert str(one) != str(other)
    assert orjson.loads(str(one)) == ["s3", "http://a", "bucket", "k", str(f)]


def test_changed_file_restarts_or_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "a.ifc"
    f.write_bytes(b"one")
    j = Journal(None)
    fj = j.for_key(str(f))
    fj.begin(FileInfo.of(f))
    fj.part_done(PartResult(1, "e", 3))
    f.write_bytes(b"longer now")
    changed = FileInfo.of(f)
    with pytest.raises(SourceChangedError, match="changed since"):
        fj.begin(changed, on_change="refuse")
    assert fj.begin(changed) is True
    assert fj.state.parts == {}


# ---- torn tails, corrupted lines, short and failed writes, the lock -----------------------------


def _journal_with(tmp_path: Path, *session_ids: str) -> Path:
    path = tmp_path / "state" / "journal.jsonl"
    j = Journal(path)
    for sid in session_ids:
        j.for_key("k").record(SessionOpened(sid, {}))
    j.close()
    return path


def test_a_torn_tail_is_cut_so_the_next_record_is_not_swallowed(tmp_path: Path) -> None:
    path = _journal_with(tmp_path, "s1")
    with path.open("ab") as f:
        f.write(b'{"op":"fact","key":"k","type":"matterport.ses')  # killed mid-write
    j = Journal(path)
    assert path.read_bytes().endswith(b"\n")
    j.for_key("k").record(SessionOpened("s2", {}))
    j.close()
    st = Journal(path).for_key("k").state
    assert st.get(SessionOpened) == SessionOpened("s2", {})


def test_a_corrupted_last_complete_line_is_not_taken_for_a_torn_one(tmp_path: Path) -> None:
    path = _journal_with(tmp_path, "s1", "s2")
    path.write_bytes(path.read_bytes().replace(b"s2", b"s\x002"))
    with pytest.raises(StateError, match="line 2 is unreadable"):
        Journal(path)


@pytest.mark.parametrize(
    "damage",
    [
        lambda line: line.replace(b"s1", b"s\x001"),  # a NUL byte
        lambda line: line.replace(b"s1", b"s7"),  # a changed character: the checksum says so
        lambda line: line[:20] + line[25:],  # a hole
    ],
    ids=["nul-byte", "altered", "truncated"],
)
def test_a_corrupted_middle_line_stops_the_run_with_its_number(
    tmp_path: Path, damage: object
) -> None:
    path = _journal_with(tmp_path, "s0", "s1", "s2")
    first, second, rest = path.read_bytes().split(b"\n", 2)
    path.write_bytes(first + b"\n" + damage(second) + b"\n" + rest)  # type: ignore[operator]
    with pytest.raises(StateError, match=r"line 2 is unreadable.*move the journal aside"):
        Journal(path)


def test_a_short_write_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.journal.log as journal_module

    real_write = os.write

    def dribble(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data[:3]))

    path = tmp_path / "state" / "journal.jsonl"
    j = Journal(path)
    monkeypatch.setattr(journal_module.os, "write", dribble)
    j.for_key("k").record(SessionOpened("s1", {"/a": [1, 2]}))
    monkeypatch.undo()
    j.close()
    assert Journal(path).for_key("k").state.get(SessionOpened) == SessionOpened(
        "s1", {"/a": [1, 2]}
    )


_FILL = """
import resource, signal, sys
from engine.journal import Journal, SessionOpened
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
j = Journal(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
n = 0
try:
    while True:
        j.for_key("k").record(SessionOpened(f"s{n}", {"/scan.e57": [n, n]}))
        n += 1
except Exception as exc:
    print(n, type(exc).__name__, exc, sep="|")
try:
    j.for_key("k").record(SessionOpened("again", {}))
except Exception as exc:
    print("again", type(exc).__name__, sep="|")
"""


def test_a_full_disk_fails_the_run_cleanly_and_leaves_a_journal_that_resumes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "journal.jsonl"
    out = subprocess.run(
        [sys.executable, "-c", _FILL, str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    first, again = out.stdout.strip().splitlines()
    written, kind, message = first.split("|")
    assert kind == "StateError" and "is full" in message and "rerun" in message
    assert again == "again|StateError"  # every later write fails at once
    data = path.read_bytes()
    assert data.endswith(b"\n")  # the failed record was cut off again
    st = Journal(path).for_key("k").state  # and the journal opens cleanly
    last = st.get(SessionOpened)
    assert last is not None and last.session_id == f"s{int(written) - 1}"


def test_one_run_at_a_time_and_a_dead_holder_frees_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.jsonl"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from engine.journal import Journal; "
            "j = Journal(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateError, match=rf"in use by another .* \(PID {holder.pid}\)"):
            Journal(path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    Journal(path).close()  # the lock of a dead process is free
