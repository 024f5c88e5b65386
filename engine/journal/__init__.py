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
- every record carries ``crc``, the CRC-32 of the record without it; a record is applied to the
  in-memory state only once it is written whole and fsynced (a short write is completed, a
  failed one is cut off again and fails the run with a ``StateError``, and every later write
  fails at once, so no platform call follows a fact that was not journaled);
- a torn last line (the process died mid-write: no newline after it) is cut off when the journal
  is opened, so the next record starts on a line of its own; any other unreadable line stops
  the run with its line number and how to recover — it is never skipped silently;
- one run at a time: the state directory is locked (``flock`` on ``lock``, holding the PID);
  a second run is refused with the first one's PID; the lock of a dead process is free.
"""

from engine.journal.facts import (
    Fact,
    FileAdded,
    IngestionRequested,
    IngestionStarted,
    Mark,
    ModelChosen,
    ModelReady,
    MultipartStarted,
    PartLimitsKnown,
    PartsPlanned,
    SessionOpened,
    SpeckleApiChosen,
    UploadStarted,
    UploadVoided,
)
from engine.journal.keys import (
    JournalKey,
    matterport_file_key,
    matterport_session_key,
    presigned_key,
    s3_key,
    speckle_key,
)
from engine.journal.log import FileJournal, FileState, Journal, encode, read_states, replay

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
    "PartsPlanned",
    "SessionOpened",
    "SpeckleApiChosen",
    "UploadStarted",
    "UploadVoided",
    "encode",
    "matterport_file_key",
    "matterport_session_key",
    "presigned_key",
    "read_states",
    "replay",
    "s3_key",
    "speckle_key",
]
