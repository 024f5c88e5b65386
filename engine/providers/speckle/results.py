"""Where a file landed in Speckle: the typed remote the target returns, and the caller's result.

Rules: ``SpeckleVersion`` is what ``SpeckleFileTarget.complete`` returns and what the journal's
``done`` record holds (``to_record``), so a rerun of a finished file rebuilds the same ids;
``SpeckleResult`` only reads it, never a string map.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.models import Remote, UploadResult

__all__ = ["SpeckleResult", "SpeckleVersion"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeckleVersion(Remote):
    """The ids of one ingested file: its project, model, blob (``file_id``), ingestion and the
    model version the ingestion created."""

    project_id: str
    model_id: str
    file_id: str
    ingestion_id: str
    version_id: str


@dataclass(frozen=True, slots=True)
class SpeckleResult:
    """One file ingested into a Speckle model: its ids, its transfer and the wall time (seconds,
    ingestion included)."""

    project_id: str
    model_id: str
    file_id: str
    ingestion_id: str
    version_id: str
    upload: UploadResult
    seconds: float

    @property
    def throughput(self) -> float:
        """Bytes per second of the whole flow (0 for an instant rerun of a finished file)."""
        return self.upload.size / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_upload(cls, upload: UploadResult, seconds: float | None = None) -> SpeckleResult:
        """Read the ids a ``SpeckleFileTarget`` returned (``upload.remote``, a
        ``SpeckleVersion``); ``TypeError`` for the result of another kind of target."""
        r = upload.remote
        if not isinstance(r, SpeckleVersion):
            raise TypeError(f"not a Speckle upload: its remote is a {type(r).__name__}")
        seconds = upload.seconds if seconds is None else seconds
        return cls(
            r.project_id, r.model_id, r.file_id, r.ingestion_id, r.version_id, upload, seconds
        )
