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

import contextlib
import sys
import time
from collections.abc import Iterator
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

from engine import events
from engine.errors import InterruptedUpload
from engine.events import BytesSent, Event, FileFailed, FileFinished, FileStarted, PartRetry, Phase
from engine.redact import redact
from engine.units import human_bytes, human_rate

__all__ = ["Mode", "OneFileView", "ProgressView", "progress_for"]

Mode = Literal["tty", "log", "json"]


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
            if not isinstance(event, events.PartDone):
                self._json(events.event_to_dict(event))
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


class OneFileView(ProgressView):
    """The view of a one-file command: its last line (``upload-engine: failed: ...``) says why
    the file failed, so the view does not say it a second time (JSON records still do)."""

    _quiet = False

    def __call__(self, event: Event) -> None:
        self._quiet = isinstance(event, FileFailed)
        try:
            super().__call__(event)
        finally:
            self._quiet = False

    def print(self, message: str) -> None:
        if not self._quiet:
            super().print(message)


@contextlib.contextmanager
def progress_for(mode: Mode, *, files: int, total: int) -> Iterator[ProgressView]:
    """The view of a command sending ``files`` files of ``total`` bytes."""
    kind = OneFileView if files == 1 else ProgressView
    with kind(mode, total_files=files, total_bytes=total) as view:
        yield view
