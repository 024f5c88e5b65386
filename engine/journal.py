"""The resume log: append-only JSON lines, one record per fact, fsynced as written.

Rules:
- records are facts in the order they happened; state is their replay (``replay`` is pure);
- a file's records start with ``begin`` (its fingerprint); a changed fingerprint starts a
  new generation and the old parts no longer count;
- ``remote`` records hold platform ids only: never tokens, never URLs (URLs carry
  signatures); ``part`` records hold a stored part's number, ETag and size;
- a record is written (and fsynced) *before* any non-idempotent platform call it guards
  (``mark``), so a rerun after a crash knows the call may have happened;
- a torn last line (the process died mid-write) is ignored on replay.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.errors import ConfigError, SourceChangedError
from engine.models import FileInfo, PartResult

__all__ = ["FileJournal", "FileState", "Journal", "replay"]


@dataclass(slots=True)
class FileState:
    """What the journal knows about one key (a file, or a group such as an import session)."""

    fingerprint: dict[str, Any] = field(default_factory=dict)
    remote: dict[str, str] = field(default_factory=dict)
    parts: dict[int, PartResult] = field(default_factory=dict)
    marks: set[str] = field(default_factory=set)
    done: dict[str, str] | None = None


def _apply(states: dict[str, FileState], rec: Mapping[str, Any]) -> None:
    op, key = rec.get("op"), rec.get("key")
    if not isinstance(key, str):
        return
    if op == "begin":
        states[key] = FileState(fingerprint=dict(rec.get("fp") or {}))
        return
    st = states.setdefault(key, FileState())
    if op == "remote":
        if rec.get("fresh"):
            st.parts.clear()
            st.remote.clear()
            st.marks.clear()
            st.done = None
        st.remote.update({str(k): str(v) for k, v in (rec.get("data") or {}).items()})
    elif op == "part":
        n = int(rec["n"])
        st.parts[n] = PartResult(n, str(rec["etag"]), int(rec["size"]))
    elif op == "mark":
        st.marks.add(str(rec["name"]))
    elif op == "done":
        st.done = {str(k): str(v) for k, v in (rec.get("remote") or {}).items()}


def replay(lines: Iterable[bytes]) -> dict[str, FileState]:
    """Rebuild every key's state from journal lines; unreadable lines are skipped."""
    states: dict[str, FileState] = {}
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a torn write at the end of a killed run
        if isinstance(rec, dict):
            _apply(states, rec)
    return states


class Journal:
    """The journal of one run directory; ``path=None`` keeps it in memory only."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._fd = -1
        self.states: dict[str, FileState] = {}
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if self.path.exists():
                    self.states = replay(self.path.read_bytes().splitlines())
                self._fd = os.open(
                    self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
                )
            except OSError as exc:
                raise ConfigError(f"cannot use journal {self.path}: {exc.strerror}") from exc

    def __repr__(self) -> str:
        return f"<Journal {self.path or 'in memory'} keys={len(self.states)}>"

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def write(self, record: dict[str, Any]) -> None:
        _apply(self.states, record)
        if self._fd >= 0:
            os.write(self._fd, orjson.dumps(record) + b"\n")
            os.fsync(self._fd)

    def for_key(self, key: str) -> FileJournal:
        return FileJournal(self, key)


class FileJournal:
    """The journal seen from one key."""

    def __init__(self, journal: Journal, key: str) -> None:
        self._journal = journal
        self.key = key

    def __repr__(self) -> str:
        st = self.state
        return f"<FileJournal {self.key} parts={len(st.parts)} done={st.done is not None}>"

    @property
    def state(self) -> FileState:
        return self._journal.states.get(self.key) or FileState()

    def begin(self, info: FileInfo, *, on_change: str = "restart") -> FileState:
        """Start or resume ``info``. A file whose fingerprint changed since the journal saw it
        restarts (``on_change="restart"``) or raises ``SourceChangedError`` (``"refuse"``)."""
        current = self._journal.states.get(self.key)
        if current is not None and current.fingerprint == info.fingerprint:
            return current
        if current is not None and current.fingerprint and on_change == "refuse":
            raise SourceChangedError(
                f"{info.path} changed since its upload started; "
                "rerun with --on-change restart to upload it again from the start"
            )
        self._journal.write({"op": "begin", "key": self.key, "fp": info.fingerprint})
        return self.state

    def set_remote(self, *, fresh: bool = False, **ids: str) -> None:
        """Record platform ids. ``fresh`` means a new remote upload: earlier parts are void."""
        rec: dict[str, Any] = {"op": "remote", "key": self.key, "data": ids}
        if fresh:
            rec["fresh"] = True
        self._journal.write(rec)

    def part_done(self, part: PartResult) -> None:
        self._journal.write(
            {"op": "part", "key": self.key, "n": part.number, "etag": part.etag, "size": part.size}
        )

    def mark(self, name: str) -> None:
        self._journal.write({"op": "mark", "key": self.key, "name": name})

    def done(self, remote: Mapping[str, str]) -> None:
        self._journal.write({"op": "done", "key": self.key, "remote": dict(remote)})
