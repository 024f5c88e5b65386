"""The journal file: replay, appends with checksums, the state directory's lock.

See ``engine.journal`` for the rules; this module keeps the ones about bytes on disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from engine.errors import SourceChangedError, StateError
from engine.journal.facts import FRESH_TAGS, Fact, Mark
from engine.journal.keys import JournalKey
from engine.models import FileInfo, PartResult

__all__ = ["FileJournal", "FileState", "Journal", "encode", "read_states", "replay"]

F = TypeVar("F", bound=Fact)


@dataclass(slots=True)
class FileState:
    """What the journal knows about one key (a file, or a group such as an import session)."""

    fingerprint: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    parts: dict[int, PartResult] = field(default_factory=dict)
    marks: set[Mark] = field(default_factory=set)
    done: dict[str, Any] | None = None

    def get(self, kind: type[F]) -> F | None:
        """The latest fact of ``kind``, or ``None``."""
        raw = self.facts.get(kind.tag)
        return kind.from_json(raw) if raw is not None else None

    def void(self) -> None:
        self.facts.clear()
        self.parts.clear()
        self.marks.clear()
        self.done = None


def _apply(states: dict[str, FileState], rec: Mapping[str, Any]) -> None:
    op, key = rec.get("op"), rec.get("key")
    if not isinstance(key, str):
        return
    if op == "begin":
        states[key] = FileState(fingerprint=dict(rec.get("fp") or {}))
        return
    st = states.setdefault(key, FileState())
    if op == "fact":
        tag, data = rec.get("type"), rec.get("data")
        if not isinstance(tag, str) or not isinstance(data, dict):
            return
        if tag in FRESH_TAGS:
            st.void()
        st.facts[tag] = data
    elif op == "part":
        n = int(rec["n"])
        st.parts[n] = PartResult(n, str(rec["etag"]), int(rec["size"]))
    elif op == "mark":
        try:
            st.marks.add(Mark(rec["name"]))
        except (KeyError, ValueError):
            return
    elif op == "done":
        remote = rec.get("remote")
        st.done = dict(remote) if isinstance(remote, dict) else {}


def _checksum(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "crc"}
    return f"{zlib.crc32(orjson.dumps(body)):08x}"


def encode(record: Mapping[str, Any]) -> bytes:
    """One journal line: the record with its ``crc``, and a newline."""
    return orjson.dumps({**record, "crc": _checksum(record)}) + b"\n"


def _decode(line: bytes) -> dict[str, Any] | str:
    """The record of one complete line, or why it cannot be read."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({exc})"
    if not isinstance(rec, dict):
        return "not a JSON object"
    crc = rec.get("crc")
    if crc is not None and crc != _checksum(rec):
        return "its checksum does not match (the line was altered)"
    return rec


def _corrupt(source: str, number: int, why: str) -> StateError:
    return StateError(
        f"{source}: line {number} is unreadable: {why}. Fix or delete that line, or move the "
        f"journal aside (mv {source} {source}.bad) to start over: files then upload again "
        "from the start"
    )


def replay(
    lines: Iterable[bytes], *, source: str = "journal", torn_tail: bool = True
) -> dict[str, FileState]:
    """Rebuild every key's state from journal lines. An unreadable *last* line is a torn write
    and ignored (unless ``torn_tail=False``: the caller cut the tail already); any other
    unreadable line raises ``StateError`` naming it."""
    states: dict[str, FileState] = {}
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if pending is not None:
            raise _corrupt(source, *pending)
        rec = _decode(line)
        if isinstance(rec, str):
            pending = (number, rec)  # fine only if nothing follows it
            continue
        _apply(states, rec)
    if pending is not None and not torn_tail:
        raise _corrupt(source, *pending)
    return states


def read_states(path: Path) -> dict[str, FileState]:
    """The replayed journal at ``path`` (a torn last line ignored); ``{}`` when absent."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StateError(f"cannot read journal {path}: {exc.strerror}") from exc
    return _replay_whole(data, path)


def _replay_whole(data: bytes, path: Path) -> dict[str, FileState]:
    whole = data[: data.rfind(b"\n") + 1]  # a fragment after the last newline is torn
    return replay(whole.split(b"\n"), source=str(path), torn_tail=False)


_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class Journal:
    """The journal of one run directory; ``path=None`` keeps it in memory only.

    ``lock``: hold the state directory's lock while open (refuse a second run)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, lock: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self._fd = -1
        self._lock_fd = -1
        self._broken: StateError | None = None
        self.states: dict[str, FileState] = {}
        if self.path is not None:
            try:
                self._open(self.path, lock)
            except BaseException:
                self.close()
                raise

    def _open(self, path: Path, lock: bool) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if lock:
                self._lock_fd = _lock(path.parent)
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            data = path.read_bytes()
            self.states = _replay_whole(data, path)
            if data and not data.endswith(b"\n"):  # a torn tail: the next record starts clean
                os.ftruncate(self._fd, data.rfind(b"\n") + 1)
                os.fsync(self._fd)
        except OSError as exc:
            raise StateError(f"cannot use journal {path}: {exc.strerror}") from exc

    def __repr__(self) -> str:
        return f"<Journal {self.path or 'in memory'} keys={len(self.states)}>"

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)  # closing the lock file releases the lock
        self._fd = self._lock_fd = -1

    def write(self, record: dict[str, Any]) -> None:
        """Write ``record`` whole and fsync it, then apply it; fail the run if it cannot be."""
        if self._broken is not None:
            raise self._broken
        if self._fd >= 0:
            self._append(encode(record))
        _apply(self.states, record)

    def _append(self, line: bytes) -> None:
        assert self.path is not None
        start = os.fstat(self._fd).st_size
        try:
            view = memoryview(line)
            while view:  # complete a short write
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)  # leave no torn record behind
            where = self.path.parent
            if exc.errno in _NO_ROOM:
                self._broken = StateError(
                    f"the state directory {where} is full ({exc.strerror}); nothing more was "
                    "sent. Free some space there, then rerun the same command to resume"
                )
            else:
                self._broken = StateError(
                    f"cannot write the journal {self.path}: {exc.strerror}; nothing more was "
                    "sent. Fix that, then rerun the same command to resume"
                )
            raise self._broken from exc

    def for_key(self, key: JournalKey | str) -> FileJournal:
        return FileJournal(self, str(key))


def _lock(state_dir: Path) -> int:
    """Take the state directory's lock (non-blocking); return its descriptor."""
    import fcntl

    fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StateError(
            f"{state_dir} is in use by another upload-engine run (PID {holder}); wait for it "
            "to finish or stop it, then rerun"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


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

    def begin(self, info: FileInfo, *, on_change: str = "restart") -> bool:
        """Start or resume ``info``; return whether it restarted because its fingerprint
        changed since the journal saw it (``on_change="restart"``). With ``"refuse"`` a
        changed file raises ``SourceChangedError``."""
        current = self._journal.states.get(self.key)
        if current is not None and current.fingerprint == info.fingerprint:
            return False
        changed = current is not None and bool(current.fingerprint)
        if changed and on_change == "refuse":
            raise SourceChangedError(
                f"{info.path} changed since its upload started; "
                "rerun with --on-change restart to upload it again from the start"
            )
        self._journal.write({"op": "begin", "key": self.key, "fp": info.fingerprint})
        return changed

    def record(self, fact: Fact) -> None:
        """Journal ``fact`` (fsynced before this returns)."""
        self._journal.write(
            {"op": "fact", "key": self.key, "type": fact.tag, "data": fact.to_json()}
        )

    def part_done(self, part: PartResult) -> None:
        self._journal.write(
            {"op": "part", "key": self.key, "n": part.number, "etag": part.etag, "size": part.size}
        )

    def mark(self, mark: Mark) -> None:
        self._journal.write({"op": "mark", "key": self.key, "name": mark.value})

    def done(self, remote: Mapping[str, Any]) -> None:
        self._journal.write({"op": "done", "key": self.key, "remote": dict(remote)})
