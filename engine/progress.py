"""Rendering of engine events for people and programs (the CLI's only view of progress).

Three modes, chosen by the CLI:
- ``tty``: a live overall bar (bytes, throughput, ETA, files done/total, retries) and a row per
  file in flight, drawn by rich on stderr; log lines print above the bars, never through them;
- ``log``: one line per file event (and per retry) on stderr, for logs and pipes;
- ``json``: newline-delimited JSON events on stdout for other programs; byte progress is
  folded into one ``Progress`` record every half second.
Everything printed is redacted.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO, Literal, Self

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from engine.errors import InterruptedUpload
from engine.events import (
    BytesSent,
    Event,
    FileFailed,
    FileFinished,
    FileStarted,
    PartDone,
    PartRetry,
    Phase,
    event_to_dict,
)
from engine.redact import redact

__all__ = ["Mode", "ProgressView", "human_bytes", "human_rate"]

Mode = Literal["tty", "log", "json"]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_rate(bytes_per_second: float) -> str:
    return f"{bytes_per_second / 1e6:.1f} MB/s"


def _failure(event: FileFailed) -> str:
    if isinstance(event.error, InterruptedUpload):
        return f"stopped (resumable): {event.error}"
    return f"FAILED: {event.error}"


class ProgressView:
    """An event hook that renders progress; use as a context manager around the work."""

    def __init__(
        self,
        mode: Mode,
        *,
        total_files: int,
        total_bytes: int,
        stream: IO[str] | None = None,
    ) -> None:
        self.mode = mode
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files_done = 0
        self.files_failed = 0
        self.retries = 0
        self.sent = 0
        self._stream = stream
        self._console = Console(file=stream or sys.stderr, highlight=False)
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._rows: dict[str, TaskID] = {}  # by absolute path
        self._last_json = 0.0

    def __repr__(self) -> str:
        return f"<ProgressView {self.mode} files={self.files_done}/{self.total_files}>"

    def __enter__(self) -> Self:
        if self.mode == "tty":
            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(bar_width=None),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}", markup=False),
                console=self._console,
                transient=False,
                refresh_per_second=8,
            )
            self._progress.start()
            self._overall = self._progress.add_task(
                "total", total=self.total_bytes or None, extra=self._summary()
            )
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _summary(self) -> str:
        text = f"files {self.files_done}/{self.total_files}"
        if self.files_failed:
            text += f", {self.files_failed} failed"
        if self.retries:
            text += f", {self.retries} retries"
        return text

    def print(self, message: str) -> None:
        """A line for a person, above the bars (or on stderr)."""
        self._console.print(redact(message), markup=False, highlight=False, soft_wrap=True)

    def _json(self, record: dict[str, object]) -> None:
        out = self._stream or sys.stdout
        out.write(redact(orjson.dumps(record, default=str).decode()) + "\n")
        out.flush()

    def __call__(self, event: Event) -> None:
        if isinstance(event, BytesSent):
            self._bytes(event)
            return
        if isinstance(event, PartRetry):
            self.retries += 1
            self.sent -= event.bytes_lost
            self._advance(str(event.path), -event.bytes_lost)
        elif isinstance(event, FileFinished):
            self.files_done += 1
        elif isinstance(event, FileFailed):
            self.files_failed += 1
        if self.mode == "json":
            if not isinstance(event, PartDone):
                self._json(event_to_dict(event))
            return
        if self.mode == "tty":
            self._tty(event)
        else:
            self._log(event)

    def _bytes(self, event: BytesSent) -> None:
        self.sent += event.bytes
        if self.mode == "tty":
            self._advance(str(event.path), event.bytes)
        elif self.mode == "json":
            now = time.monotonic()
            if now - self._last_json >= 0.5:
                self._last_json = now
                self._json(
                    {
                        "type": "Progress",
                        "bytes_sent": self.sent,
                        "total_bytes": self.total_bytes,
                        "files_done": self.files_done,
                        "total_files": self.total_files,
                        "retries": self.retries,
                    }
                )

    def _advance(self, key: str, n: int) -> None:
        if self._progress is None or self._overall is None:
            return
        self._progress.update(self._overall, advance=n, extra=self._summary())
        row = self._rows.get(key)
        if row is not None:
            self._progress.update(row, advance=n)

    def _tty(self, event: Event) -> None:
        progress = self._progress
        assert progress is not None and self._overall is not None
        name, key = event.path.name, str(event.path)  # rows by path: names repeat in a tree
        if isinstance(event, FileStarted):
            row = progress.add_task(
                f"  {name}", total=event.size or None, completed=event.bytes_done, extra=""
            )
            self._rows[key] = row
            progress.update(self._overall, advance=event.bytes_done, extra=self._summary())
            if event.parts_done:
                self.print(f"{name}: resuming, {event.parts_done}/{event.parts} parts stored")
        elif isinstance(event, PartRetry):
            self.print(
                f"{name}: part {event.part} attempt {event.attempt} failed ({event.reason}); "
                f"retrying in {event.delay:.2f} s"
            )
        elif isinstance(event, Phase):
            shown = self._rows.get(key)
            if shown is not None:
                progress.update(shown, extra=event.message[:60])
            else:
                self.print(f"{name}: {event.message}")
        elif isinstance(event, FileFinished | FileFailed):
            gone = self._rows.pop(key, None)
            if gone is not None:
                progress.remove_task(gone)
            progress.update(self._overall, extra=self._summary())
            if isinstance(event, FileFailed):
                self.print(f"{name}: {_failure(event)}")

    def _log(self, event: Event) -> None:
        name = event.path.name
        if isinstance(event, FileStarted):
            resumed = f", {event.parts_done} already stored" if event.parts_done else ""
            self.print(
                f"{name}: started, {human_bytes(event.size)} in {event.parts} parts{resumed}"
            )
        elif isinstance(event, PartRetry):
            self.print(
                f"{name}: part {event.part} attempt {event.attempt} failed ({event.reason}); "
                f"retrying in {event.delay:.2f} s"
            )
        elif isinstance(event, Phase):
            pct = f" ({event.progress:.0%})" if event.progress is not None else ""
            self.print(f"{name}: {event.message}{pct}")
        elif isinstance(event, FileFinished):
            r = event.result
            self.print(
                f"{name}: done, {human_bytes(r.size)} in {r.seconds:.2f} s "
                f"({human_rate(r.throughput)}), {r.retries} retries"
            )
        elif isinstance(event, FileFailed):
            self.print(f"{name}: {_failure(event)}")
