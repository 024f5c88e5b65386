"""What the journal records: marks and facts, frozen, one type per thing learned.

Facts have snake_case fields and integers as integers; a ``fresh`` fact (a new remote upload)
voids every fact, part, mark and ``done`` of its key that came before it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

__all__ = [
    "Fact",
    "FileAdded",
    "IngestionRequested",
    "IngestionStarted",
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
]


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
class PartsPlanned(Fact):
    """Every target: the part size the file's parts were planned with (the first part's
    size), so that a rerun plans the same ranges and its journaled parts still count."""

    tag: ClassVar[str] = "plan"
    part_size: int


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
class SpeckleApiChosen(Fact):
    """Speckle: the API (``v3``, ``v2``, ``rest``) that is about to be asked to ingest the file;
    a rerun asks the same one about it (no record: ``v3``, the only one before)."""

    tag: ClassVar[str] = "speckle.api"
    api: str


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


FRESH_TAGS = frozenset(t.tag for t in Fact.__subclasses__() if t.fresh)
