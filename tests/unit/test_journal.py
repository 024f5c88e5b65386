"""The journal: replay is pure, torn writes are ignored, changed files restart."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine import FileInfo, PartResult, SourceChangedError
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
