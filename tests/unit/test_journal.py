"""The journal: replay is pure, torn writes are ignored, changed files restart."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine import FileInfo, PartResult, SourceChangedError
from engine.journal import Journal, replay


def test_replay_rebuilds_parts_remote_marks_and_done(tmp_path: Path) -> None:
    f = tmp_path / "a.e57"
    f.write_bytes(b"x" * 10)
    info = FileInfo.of(f)
    j = Journal(tmp_path / "state" / "journal.jsonl")
    fj = j.for_key(info.key)
    fj.begin(info)
    fj.set_remote(session="s1", file="f1")
    fj.part_done(PartResult(1, '"aa"', 5))
    fj.part_done(PartResult(2, '"bb"', 5))
    fj.mark("completion-called")
    j.close()
    again = Journal(tmp_path / "state" / "journal.jsonl")
    st = again.for_key(info.key).begin(info)
    assert st.remote == {"session": "s1", "file": "f1"}
    assert sorted(st.parts) == [1, 2] and st.parts[2].etag == '"bb"'
    assert "completion-called" in st.marks and st.done is None
    again.close()
    assert (tmp_path / "state" / "journal.jsonl").stat().st_mode & 0o777 == 0o600


def test_a_torn_last_line_is_ignored() -> None:
    lines = [
        orjson.dumps({"op": "begin", "key": "k", "fp": {"size": 1}}),
        orjson.dumps({"op": "part", "key": "k", "n": 1, "etag": "e", "size": 1}),
        b'{"op": "part", "key": "k", "n": 2, "et',
    ]
    assert list(replay(lines)["k"].parts) == [1]


def test_fresh_remote_voids_earlier_parts() -> None:
    lines = [
        orjson.dumps({"op": "begin", "key": "k", "fp": {}}),
        orjson.dumps({"op": "part", "key": "k", "n": 1, "etag": "e", "size": 1}),
        orjson.dumps({"op": "remote", "key": "k", "data": {"upload": "u2"}, "fresh": True}),
    ]
    st = replay(lines)["k"]
    assert st.parts == {} and st.remote == {"upload": "u2"}


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
    assert fj.begin(changed).parts == {}
