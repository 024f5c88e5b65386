"""The Import API's state: sessions, E57 objects and files, and what the E57 check hands back.

Rules this module keeps:

* **State** lives in memory on the event loop thread: the records here are mutated only there.
  The E57 check runs in one worker thread on immutable inputs (:class:`FileCheck`) and hands back
  one immutable result (:class:`Outcome`); reads apply it lazily.
* **A file's status** is ``PENDING`` → ``STARTED`` → ``COMPLETED`` (see the resolvers);
  ``requested`` holds the part uploads requested while STARTED, by zero-based part.
* A session that failed its check (``failure`` set) never counts against the quota.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from engine.sandbox.blobstore import StoredObject, StoredPart

__all__ = [
    "Caller",
    "E57ObjectRecord",
    "FileCheck",
    "ImportFileRecord",
    "ImportSessionRecord",
    "Outcome",
    "UploadStatus",
]

UploadStatus = Literal["PENDING", "STARTED", "COMPLETED"]


@dataclass(eq=False)
class ImportFileRecord:
    """One file of a session. ``md5`` is the assembled object's, set when the commit check ran."""

    id: str
    client_id: str
    object_id: str
    name: str
    type: str
    size: int
    key: str
    status: UploadStatus = "PENDING"
    upload_id: str | None = None
    requested: dict[int, dict[str, Any]] = field(default_factory=dict)
    parts: tuple[StoredPart, ...] = ()
    stored: StoredObject | None = None
    completing: bool = False
    md5: str | None = None

    def __repr__(self) -> str:
        return f"ImportFileRecord({self.client_id!r}, {self.status}, {self.size} bytes)"


@dataclass(eq=False)
class E57ObjectRecord:
    id: str
    client_id: str
    files: list[ImportFileRecord]


@dataclass(eq=False)
class ImportSessionRecord:
    """One import session. ``failure`` says why no model was made (None while all is well)."""

    id: str
    organization_id: str
    user_id: str
    process_type: str
    name: str | None
    description: str | None
    created: datetime
    modified: datetime
    objects: list[E57ObjectRecord] = field(default_factory=list)
    files: dict[str, ImportFileRecord] = field(default_factory=dict)
    committed: bool = False
    committed_at: float | None = None
    model_id: str | None = None
    failure: str | None = None
    check: Future[Outcome] | None = None

    def __repr__(self) -> str:
        state = self.model_id or self.failure or ("committed" if self.committed else "open")
        return f"ImportSessionRecord({self.id!r}, files={len(self.files)}, {state})"

    @property
    def counts_against_quota(self) -> bool:
        return self.committed and self.failure is None


@dataclass(frozen=True)
class Caller:
    """Who is asking: the token id and the user id derived from it."""

    token_id: str
    user_id: str


@dataclass(frozen=True)
class FileCheck:
    """One file for the commit check (handed to the worker thread)."""

    client_id: str
    name: str
    path: Path | None  # None: nothing on disk (discard mode), skip the E57 check
    stored_md5: str


@dataclass(frozen=True)
class Outcome:
    """What the commit check found: MD5 by clientId, and why there is no model (or None)."""

    md5: Mapping[str, str]
    failure: str | None
