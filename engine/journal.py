"""The resume log: append-only JSON lines, one record per fact, fsynced as written.

Rules:
- records are facts in the order they happened; state is their replay (``replay`` is pure);
- a key is built by one of the ``*_key`` functions below (a JSON array of its parts, so no
  separator can be confused with a path); a file's records start with ``begin`` (its
  fingerprint); a changed fingerprint starts a new generation and the old facts no longer count;
- facts are frozen ``Fact`` records, one type per thing learned from a platform (ids, limits,
  requested calls), with snake_case fields and integers as integers; a fact whose type is
  ``fresh`` (a new remote upload) voids every fact, part, mark and ``done`` before it;
- facts hold platform ids only: never tokens, never URLs (URLs carry signatures); ``part``
  records hold a stored part's number, ETag and size;
- a ``Mark`` is written (and fsynced) *before* the non-idempotent platform call it guards, so a
  rerun after a crash knows the call may have happened;
- a torn last line (the process died mid-write) is ignored on replay.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import orjson

from engine.errors import ConfigError, SourceChangedError
from engine.models import FileInfo, PartResult

__all__ = [
    "Fact",
    "FileAdded",
    "FileJournal",
    "FileState",
    "IngestionRequested",
    "IngestionStarted",
    "Journal",
    "JournalKey",
    "Mark",
    "ModelChosen",
    "ModelReady",
    "MultipartStarted",
    "PartLimitsKnown",
    "SessionOpened",
    "UploadStarted",
    "UploadVoided",
    "matterport_file_key",
    "matterport_session_key",
    "presigned_key",
    "replay",
    "s3_key",
    "speckle_key",
]

F = TypeVar("F", bound="Fact")


# ---- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalKey:
    """One journal key: a kind and the parts that make it unique (destination first)."""

    kind: str
    parts: tuple[str, ...]

    def __str__(self) -> str:
        return orjson.dumps([self.kind, *self.parts]).decode()


def presigned_key(file: FileInfo) -> JournalKey:
    return JournalKey("presigned", (file.key,))


def s3_key(endpoint: str, bucket: str, key: str, file: FileInfo) -> JournalKey:
    return JournalKey("s3", (endpoint, bucket, key, file.key))


def speckle_key(server: str, project_id: str, model_ref: str, file: FileInfo) -> JournalKey:
    return JournalKey("speckle", (server, project_id, model_ref, file.key))


def matterport_session_key(
    endpoint: str, organization: str, files: Sequence[FileInfo]
) -> JournalKey:
    return JournalKey("matterport-session", (endpoint, organization, *sorted(f.key for f in files)))


def matterport_file_key(endpoint: str, session_id: str, file: FileInfo) -> JournalKey:
    return JournalKey("matterport-file", (endpoint, session_id, file.key))


# ---- facts ---------------------------------------------------------------------------------------


class Mark(enum.StrEnum):
    """A non-idempotent call that may have happened (written before it is sent)."""

    COMMIT_REQUESTED = "commit-requested"
    COMMITTED = "committed"
    INGESTION_REQUESTED = "ingestion-requested"


@dataclass(frozen=True, slots=True)
class Fact:
    """Something learned from a platform. ``tag`` names the type in the journal."""

    tag: ClassVar[str] = ""
    fresh: ClassVar[bool] = False  # a new remote upload: everything before it is void

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self | None:
        """The fact, or ``None`` when the record does not hold one of this type."""
        try:
            return cls(**{f.name: raw[f.name] for f in fields(cls)})
        except (KeyError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class MultipartStarted(Fact):
    """S3: ``CreateMultipartUpload`` answered."""

    tag: ClassVar[str] = "s3.multipart"
    fresh: ClassVar[bool] = True
    bucket: str
    key: str
    upload_id: str


@dataclass(frozen=True, slots=True)
class SessionOpened(Fact):
    """Matterport: ``addImportSession`` answered for these files (path -> [size, mtime_ns])."""

    tag: ClassVar[str] = "matterport.session"
    fresh: ClassVar[bool] = True
    session_id: str
    files: dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class ModelReady(Fact):
    """Matterport: the committed session's model."""

    tag: ClassVar[str] = "matterport.model"
    model_id: str


@dataclass(frozen=True, slots=True)
class FileAdded(Fact):
    """Matterport: the file's ids in its session (``addE57Object``)."""

    tag: ClassVar[str] = "matterport.file"
    session_id: str
    client_id: str
    e57_id: str
    file_id: str


@dataclass(frozen=True, slots=True)
class PartLimitsKnown(Fact):
    """Matterport: the part limits ``requestPartUpload`` gave for the file, in bytes."""

    tag: ClassVar[str] = "matterport.limits"
    min_size: int
    max_size: int


@dataclass(frozen=True, slots=True)
class UploadStarted(Fact):
    """Speckle: ``generateUploadUrl`` answered with a new blob."""

    tag: ClassVar[str] = "speckle.upload"
    fresh: ClassVar[bool] = True
    project_id: str
    model_id: str
    file_id: str


@dataclass(frozen=True, slots=True)
class ModelChosen(Fact):
    """Speckle: the stored blob now goes to this model."""

    tag: ClassVar[str] = "speckle.model"
    model_id: str


@dataclass(frozen=True, slots=True)
class IngestionRequested(Fact):
    """Speckle: ``startFileIngestion`` is about to be sent with this ETag, at this time (ISO)."""

    tag: ClassVar[str] = "speckle.ingestion-requested"
    etag: str
    requested_at: str


@dataclass(frozen=True, slots=True)
class IngestionStarted(Fact):
    """Speckle: the ingestion's id."""

    tag: ClassVar[str] = "speckle.ingestion"
    ingestion_id: str


@dataclass(frozen=True, slots=True)
class UploadVoided(Fact):
    """The remote upload can never complete (its blob is spent): a rerun starts over."""

    tag: ClassVar[str] = "void"
    fresh: ClassVar[bool] = True


# ---- state ---------------------------------------------------------------------------------------


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


_FRESH_TAGS = frozenset(t.tag for t in Fact.__subclasses__() if t.fresh)


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
        if tag in _FRESH_TAGS:
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

    def for_key(self, key: JournalKey | str) -> FileJournal:
        return FileJournal(self, str(key))


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
