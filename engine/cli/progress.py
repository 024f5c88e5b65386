"""Rendering of engine events for people and programs (the CLI's only view of progress).

Three modes, chosen by the CLI:
- ``tty``: live bars drawn by rich on stderr: one bar per file in flight, and above them a
  total bar when there is more than one file (so one file shows one bar, which names the
  phase it is in: "committing", "waiting for the model"); lines print above the bars;
- ``log``: one line per file event on stderr, each with its time, and a progress line at
  least every ``interval`` seconds while the command runs (for logs and pipes);
- ``json``: JSON lines on stdout (``output.json_line``: ``type`` and ``ts`` on each); byte
  progress is folded into one ``Progress`` record every half second.

While parts move, the summary (total bar, progress lines, ``Progress`` records) shows the
connections in use and the window (``connections 12/16``) of the uploader it ``watch``es; a
change of the adaptive window (``Concurrency``) is a ``-v`` line.

The level (``engine.cli.verbosity``) says which lines print. Files are named by their path
relative to ``root`` (the import's directory) or the working directory, control characters
escaped; everything printed is redacted. Rates count the bytes this run sent (parts stored
by an earlier run and bytes of failed attempts excluded), over the view's own time: the bar
and the final line give the same number.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, Self

from engine import events
from engine.cli.output import escape, json_line, plural, shown_path
from engine.cli.verbosity import Level, rank
from engine.errors import InterruptedUpload
from engine.events import BytesSent, Event, FileFailed, FileFinished, FileStarted, PartRetry, Phase
from engine.redact import redact
from engine.units import human_bytes, human_rate

if TYPE_CHECKING:
    from rich.progress import Progress, Task, TaskID
    from rich.text import Text

__all__ = ["Mode", "ProgressView", "progress_for"]

Mode = Literal["tty", "log", "json"]
MAX_PARTS = 10_000  # what S3 and the platforms built on it allow; a larger plan grows parts


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
        level: Level = "NOTICE",
        root: Path | None = None,
        part_size: int | None = None,
        interval: float = 10.0,
        quiet_failures: bool = False,
        stream: IO[str] | None = None,
    ) -> None:
        self.mode: Mode = "log" if mode == "tty" and level == "ERROR" else mode
        self.level: Level = level
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files_done = 0
        self.files_failed = 0
        self.retries = 0
        self.sent = 0  # bytes this run stored (failed attempts subtracted)
        self.root = root
        self.part_size = part_size
        self.interval = interval
        self.quiet_failures = quiet_failures  # the command's last line says why (one file)
        self._stream = stream or sys.stderr
        self._json_stream = stream  # None: stdout
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._ended: float | None = None
        self._bars: Progress | None = None
        self._overall: TaskID | None = None
        self._rows: dict[str, TaskID] = {}  # by path: names repeat in a tree
        self._left: dict[str, int] = {}  # bytes a row has still to send
        self._phased: set[str] = set()  # rows showing a phase of the platform's
        self._overall_total = total_bytes
        self._last_json = 0.0
        self._told_part_size = False
        self._active: set[str] = set()  # files started and not yet ended
        self._planned: dict[str, tuple[int, int]] = {}  # a file's size and parts
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self.workers: dict[str, int] = {}  # bytes per cluster worker (``worker_bytes``)
        self._worker_rows: dict[str, TaskID] = {}
        self._connections: Callable[[], tuple[int, int]] | None = None

    def watch(self, connections: Callable[[], tuple[int, int]]) -> None:
        """Show ``connections()`` (PUTs in flight, window size) while parts move."""
        self._connections = connections

    def connections(self) -> tuple[int, int] | None:
        """(PUTs in flight, window size) of the watched uploader, while files are active."""
        if self._connections is None or not self._active:
            return None
        return self._connections()

    def __repr__(self) -> str:
        return f"<ProgressView {self.mode} files={self.files_done}/{self.total_files}>"

    # ---- time and rate ---------------------------------------------------------------------

    @property
    def seconds(self) -> float:
        """Seconds since the view opened (frozen when it closed)."""
        return (self._ended or time.monotonic()) - self._started

    @property
    def rate(self) -> float:
        """Bytes per second this run sent: what the bar shows and the final line says."""
        seconds = self.seconds
        return self.sent / seconds if seconds > 0 else 0.0

    # ---- opening and closing ---------------------------------------------------------------

    def __enter__(self) -> Self:
        self._started = time.monotonic()
        if self.mode == "tty":
            self._bars = _make_bars(self)
            self._bars.start()
            if self.total_files != 1:
                self._overall = self._bars.add_task(
                    "total", total=self.total_bytes or None, extra=self._summary(), view=True
                )
        elif self.mode == "log" and rank(self.level) >= rank("NOTICE") and self.interval > 0:
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._ended = time.monotonic()
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            if self._active:  # during a transfer: not while connecting, not after the last
                self.print(self.progress_line())

    def progress_line(self) -> str:
        total = self.total_bytes
        share = f" ({self.sent / total:.0%})" if total else ""
        text = (
            f"progress: {human_bytes(self.sent)} of {human_bytes(total)}{share}, "
            f"{human_rate(self.rate)}, {self._summary()}"
        )
        if self.workers:
            text += "; by worker: " + ", ".join(
                f"{w} {human_bytes(n)}" for w, n in sorted(self.workers.items())
            )
        return text

    def _summary(self) -> str:
        text = f"files {self.files_done}/{self.total_files}"
        if (used := self.connections()) is not None:
            text += f", connections {used[0]}/{used[1]}"
        if self.files_failed:
            text += f", {self.files_failed} failed"
        if self.retries:
            text += ", " + plural(self.retries, "retry", "retries")
        return text

    # ---- lines -----------------------------------------------------------------------------

    def shows(self, level: Level) -> bool:
        return rank(level) <= rank(self.level)

    def print(self, message: str, level: Level = "NOTICE") -> None:
        """A line for a person on stderr (above the bars), if the level shows it: redacted,
        control characters escaped, with its time in log mode and from ``-v`` on."""
        if not self.shows(level):
            return
        text = escape(redact(message))
        if self.mode != "tty" or rank(self.level) >= rank("INFO"):
            text = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        with self._lock:
            if self._bars is not None:
                self._bars.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                self._stream.write(text + "\n")
                self._stream.flush()

    def name(self, path: Path) -> str:
        return shown_path(path, self.root)

    # ---- events ----------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        if isinstance(event, BytesSent):
            self._bytes(event)
            return
        if isinstance(event, events.Concurrency):
            if self.mode == "json":
                json_line(events.event_to_dict(event), self._json_stream)
            else:
                self.print(
                    f"concurrency: {plural(event.size, 'PUT')} at once ({event.why})", "INFO"
                )
            return
        if isinstance(event, PartRetry):
            self.retries += 1
            self.sent -= event.bytes_lost
            self._advance(str(event.path), -event.bytes_lost)
        elif isinstance(event, FileFinished):
            self.files_done += 1
            self._active.discard(str(event.path))
        elif isinstance(event, FileFailed):
            self.files_failed += 1
            self._active.discard(str(event.path))
        elif isinstance(event, FileStarted):
            self._active.add(str(event.path))
            self._planned[str(event.path)] = (event.size, event.parts)
        elif isinstance(event, events.PartDone):
            self._check_part_size(event)
        if self.mode == "json":
            if not isinstance(event, events.PartDone):
                json_line(events.event_to_dict(event), self._json_stream)
            return
        if self.mode == "tty":
            self._tty(event)
        self._line(event)

    def _bytes(self, event: BytesSent) -> None:
        self.sent += event.bytes
        if self.mode == "tty":
            self._advance(str(event.path), event.bytes)
        elif self.mode == "json":
            now = time.monotonic()
            if now - self._last_json >= 0.5:
                self._last_json = now
                json_line(
                    {
                        "type": "Progress",
                        "bytes_sent": self.sent,
                        "total_bytes": self.total_bytes,
                        "files_done": self.files_done,
                        "total_files": self.total_files,
                        "retries": self.retries,
                        **({"workers": dict(self.workers)} if self.workers else {}),
                        **_connection_fields(self.connections()),
                    },
                    self._json_stream,
                )

    def _check_part_size(self, event: events.PartDone) -> None:
        """Say once when the destination made the parts larger than ``--part-size`` (seen on
        a stored part that is not its file's last: every such part has the planned size)."""
        asked = self.part_size
        planned = self._planned.get(str(event.path))
        if self._told_part_size or not asked or planned is None or event.size <= asked:
            return
        size, parts = planned
        if event.part >= parts:
            return
        self._told_part_size = True
        if math.ceil(size / asked) > MAX_PARTS:
            why = f"would need more than {MAX_PARTS:,} parts"
        else:
            why = "is below the destination's minimum part size"
        self.print(
            f"--part-size {human_bytes(asked)} {why}: sending parts of {human_bytes(event.size)}"
        )

    def _line(self, event: events.FileEvent) -> None:
        name = self.name(event.path)
        if isinstance(event, FileStarted):
            resumed = f", {event.parts_done} already stored" if event.parts_done else ""
            parts = plural(event.parts, "part")
            level: Level = "NOTICE" if self.mode == "log" or event.parts_done else "INFO"
            self.print(f"{name}: started, {human_bytes(event.size)} in {parts}{resumed}", level)
        elif isinstance(event, PartRetry):
            self.print(
                f"{name}: part {event.part} attempt {event.attempt} failed ({event.reason}); "
                f"retrying in {event.delay:.2f} s",
                "INFO",
            )
        elif isinstance(event, Phase):
            pct = f" ({event.progress:.0%})" if event.progress is not None else ""
            self.print(f"{name}: {event.message}{pct}", _phase_level(event))
        elif isinstance(event, FileFinished):
            self.print(f"{name}: {_done(event)}", "NOTICE" if self.mode == "log" else "INFO")
        elif isinstance(event, FileFailed) and not self.quiet_failures:
            self.print(f"{name}: {_failure(event)}", "ERROR")
        elif isinstance(event, events.PartDone):
            self.print(f"{name}: part {event.part} stored ({event.etag})", "DEBUG")

    # ---- bars ------------------------------------------------------------------------------

    def _advance(self, key: str, n: int) -> None:
        if self._bars is None:
            return
        if self._overall is not None:
            self._bars.update(self._overall, advance=n, extra=self._summary())
        row = self._rows.get(key)
        if row is not None:
            self._bars.update(row, advance=n)
            self._left[key] = self._left.get(key, 0) - n
            if self._left[key] <= 0 and key not in self._phased:
                self._bars.update(row, extra="committing")
            elif self._overall is None and key not in self._phased:  # one file: its row
                used = self.connections()
                extra = "" if used is None else f"connections {used[0]}/{used[1]}"
                self._bars.update(row, extra=extra)

    def worker_bytes(self, worker: str, n: int) -> None:
        """A cluster worker (``engine.cluster``) sent ``n`` more bytes (fewer after a failed
        attempt): a row per worker under the bars, and the counts in progress lines and JSON."""
        self.workers[worker] = self.workers.get(worker, 0) + n
        if self._bars is None:
            return
        row = self._worker_rows.get(worker)
        if row is None:
            row = self._bars.add_task(f"  worker {worker}", total=None, extra="", view=False)
            self._worker_rows[worker] = row
        self._bars.update(row, advance=n)

    def _tty(self, event: events.FileEvent) -> None:
        bars = self._bars
        if bars is None:
            return
        key = str(event.path)
        if isinstance(event, FileStarted):
            stored = f" ({human_bytes(event.bytes_done)} stored before)" if event.bytes_done else ""
            self._rows[key] = bars.add_task(
                f"  {self.name(event.path)}{stored}",
                total=(event.size - event.bytes_done) or None,
                extra="",
                view=self.total_files == 1,
            )
            self._left[key] = event.size - event.bytes_done
            if self._overall is not None and event.bytes_done:  # this run will not send them
                self._overall_total = max(0, self._overall_total - event.bytes_done)
                bars.update(self._overall, total=self._overall_total or None)
        elif isinstance(event, Phase) and key in self._rows:
            self._phased.add(key)
            bars.update(self._rows[key], extra=event.message[:60])
        elif isinstance(event, FileFinished | FileFailed):
            if self.total_files == 1 and isinstance(event, FileFinished) and key in self._rows:
                self._phased.add(key)
                bars.update(self._rows[key], extra="uploaded")
            elif key in self._rows:
                bars.remove_task(self._rows.pop(key))
            if self._overall is not None:
                bars.update(self._overall, extra=self._summary())


def _connection_fields(used: tuple[int, int] | None) -> dict[str, int]:
    return {} if used is None else {"connections": used[0], "window": used[1]}


def _phase_level(event: Phase) -> Level:
    """Phases are ``-v`` detail, except what changes the plan: a resume, a restart."""
    notable = event.message.startswith(
        ("changed since", "resuming", "the journal says", "the store's ETags cannot")
    )
    return "NOTICE" if notable else "INFO"


def _done(event: FileFinished) -> str:
    r = event.result
    if r.skipped is not None:
        return f"skipped: {r.skipped.reason} ({human_bytes(r.size)})"
    rate = r.bytes_sent / r.seconds if r.seconds > 0 else 0.0
    return f"done, {human_bytes(r.size)} in {r.seconds:.2f} s ({human_rate(rate)}), " + plural(
        r.retries, "retry", "retries"
    )


def _make_bars(view: ProgressView) -> Progress:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        """The view's rate on the view's bar (the final line's number); a file's own on its."""

        def render(self, task: Task) -> Text:
            if task.fields.get("view"):
                return Text(human_rate(view.rate))
            elapsed = task.elapsed or 0.0
            return Text(human_rate(task.completed / elapsed if elapsed > 0 else 0.0))

    console = Console(file=view._stream, highlight=False)
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(bar_width=None),
        DownloadColumn(binary_units=True),
        Rate(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[extra]}", markup=False),
        console=console,
        transient=False,
        refresh_per_second=8,
    )


@contextlib.contextmanager
def progress_for(mode: Mode, *, files: int, total: int, **kw: Any) -> Iterator[ProgressView]:
    """The view of a command sending ``files`` files of ``total`` bytes."""
    with ProgressView(mode, total_files=files, total_bytes=total, **kw) as view:
        yield view


#: what a command needs to build its view from its arguments (``options.view_for``)
ViewFactory = Callable[..., ProgressView]
