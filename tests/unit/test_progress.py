"""Rendering of events: log lines, NDJSON, and the live view's per-file rows."""

from __future__ import annotations

import io
import re
from pathlib import Path

import orjson

from engine.cli.progress import ProgressView
from engine.events import BytesSent, FileFailed, FileFinished, FileStarted, PartRetry, Phase
from engine.models import UploadResult

ROOT = Path("/scans")
A = ROOT / "site-a" / "scan.e57"
B = ROOT / "site-b" / "scan.e57"  # the same name in another folder
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} ")


def unstamped(text: str) -> list[str]:
    """The log's lines without their times (each must have one)."""
    lines = text.splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    return [STAMP.sub("", line) for line in lines]


def finished(path: Path, size: int) -> FileFinished:
    return FileFinished(path, UploadResult(path, size, (), 2.0, size, 1, {"model": "m1"}))


def test_log_mode_prints_one_line_per_file_event_and_redacts() -> None:
    out = io.StringIO()
    with ProgressView(
        "log", total_files=1, total_bytes=10, stream=out, level="INFO", root=ROOT
    ) as view:
        view(FileStarted(A, 10, 2, 0, 0))
        view(BytesSent(A, 1, 5))
        url = "http://h/blob/k?X-Signature=s3cr3t"
        view(PartRetry(A, 1, 1, f"reset while writing to {url}", 0.5, 5))
        view(Phase(A, "ingestion processing", 0.5))
        view(finished(A, 10))
    lines = unstamped(out.getvalue())
    assert lines[0] == "site-a/scan.e57: started, 10 B in 2 parts"  # named under the root
    assert "retrying in 0.50 s" in lines[1] and "s3cr3t" not in out.getvalue()
    assert lines[2] == "site-a/scan.e57: ingestion processing (50%)"
    assert lines[3].startswith("site-a/scan.e57: done, 10 B in 2.00 s")
    assert lines[3].endswith(", 1 retry")
    assert len(lines) == 4  # byte progress is not logged line by line
    assert view.retries == 1 and view.files_done == 1 and view.sent == 0


def test_json_mode_writes_one_record_per_line() -> None:
    out = io.StringIO()
    with ProgressView("json", total_files=1, total_bytes=10, stream=out) as view:
        view(FileStarted(A, 10, 1, 0, 0))
        view(BytesSent(A, 1, 10))
        view(FileFailed(A, ValueError("bad token Bearer abc.def")))
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [r["type"] for r in records] == ["FileStarted", "Progress", "FileFailed"]
    assert records[1]["bytes_sent"] == 10
    assert "abc.def" not in records[2]["error"]


def test_live_view_keeps_a_row_per_path_even_for_equal_names() -> None:
    out = io.StringIO()
    with ProgressView("tty", total_files=2, total_bytes=20, stream=out) as view:
        view(FileStarted(A, 10, 1, 0, 0))
        view(FileStarted(B, 10, 1, 0, 0))
        assert len(view._rows) == 2
        view(BytesSent(A, 1, 10))
        view(finished(A, 10))
        assert list(view._rows) == [str(B)]
        view(finished(B, 10))
    assert view.files_done == 2 and view.sent == 10


def test_a_stopped_file_is_not_reported_as_failed() -> None:
    from engine.errors import InterruptedUpload

    out = io.StringIO()
    with ProgressView("log", total_files=1, total_bytes=10, stream=out, root=ROOT) as view:
        view(FileFailed(A, InterruptedUpload("2 of 4 parts left")))
    assert unstamped(out.getvalue()) == ["site-a/scan.e57: stopped (resumable): 2 of 4 parts left"]
