"""The one exception tree of the engine. Every public call raises only these.

::

    UploadError                      any failure of the engine, one per failed file
    ├── ConfigError                  invalid configuration or arguments (a usage error)
    ├── InterruptedUpload            stopped on request before it finished (resumable)
    ├── StateError                   the state directory cannot be used: full, corrupted,
    │                                or locked by another run (nothing further is sent)
    ├── InputError                   the local file cannot be uploaded as it is
    │   ├── SourceError              missing, unreadable, not a regular file
    │   ├── SourceChangedError       size or mtime changed since planning / during upload
    │   ├── FormatError              not the format the target ingests (wrong header)
    │   └── TooLargeError            above what the target accepts
    ├── TransferError                a part could not be stored          (.part_number)
    │   ├── PartRejectedError        storage refused it for good (4xx), with its message
    │   └── RetriesExhaustedError    transient failures used up every attempt
    └── RemoteError                  the platform's control plane said no   (.code)
        ├── AuthenticationError      bad or missing credentials
        ├── PermissionDeniedError    credentials valid, access refused
        ├── NotFoundError            organization, project, model, session ... unknown
        ├── ConflictError            not unique / already registered
        ├── QuotaExceededError       the account's limits
        ├── InvalidRequestError      the platform rejected the request's shape or values
        ├── ServiceError             5xx / internal error that outlived its retries
        └── ProcessingError          the platform took the file but could not ingest it

Foreign exceptions (aiohttp, OSError, GraphQL payloads) are translated at one place each:
``transport`` (storage PUTs), ``source`` (file reads) and ``graphql`` (control planes); the
transient cause rides along as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "FormatError",
    "InputError",
    "InterruptedUpload",
    "InvalidRequestError",
    "NotFoundError",
    "PartRejectedError",
    "PermissionDeniedError",
    "ProcessingError",
    "QuotaExceededError",
    "RemoteError",
    "RetriesExhaustedError",
    "ServiceError",
    "SourceChangedError",
    "SourceError",
    "StateError",
    "TooLargeError",
    "TransferError",
    "UploadError",
    "source_error",
]


class UploadError(Exception):
    """Base of every error the engine raises. ``str(err)`` is one actionable line."""


class ConfigError(UploadError, ValueError):
    """Invalid configuration or arguments."""


class InterruptedUpload(UploadError):
    """The upload was asked to stop (Ctrl-C) and stopped cleanly; a rerun resumes it."""


class StateError(UploadError):
    """The journal or its directory cannot be used; the message says what to do."""


class InputError(UploadError):
    """The local file cannot be uploaded as it is."""


class SourceError(InputError):
    """The file is missing, unreadable or not a regular file."""


class SourceChangedError(InputError):
    """The file changed (size or modification time) after it was planned."""


class FormatError(InputError):
    """The file is not in a format the target ingests."""


class TooLargeError(InputError):
    """The file is larger than the target accepts."""


class TransferError(UploadError):
    """A part could not be stored."""

    def __init__(self, message: str, *, part_number: int) -> None:
        super().__init__(message)
        self.part_number = part_number


class PartRejectedError(TransferError):
    """Storage refused a part for a reason a retry cannot fix."""


class RetriesExhaustedError(TransferError):
    """A part failed transiently on every attempt."""


class RemoteError(UploadError):
    """The platform's control plane refused a request. ``code`` is the platform's code."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class AuthenticationError(RemoteError):
    """Credentials are missing, malformed or not accepted."""


class PermissionDeniedError(RemoteError):
    """Credentials are valid but may not do this."""


class NotFoundError(RemoteError):
    """A referenced object (organization, project, model, session) does not exist."""


class ConflictError(RemoteError):
    """The request collides with existing state (not unique, already registered)."""


class QuotaExceededError(RemoteError):
    """The account's limits forbid the request."""


class InvalidRequestError(RemoteError):
    """The platform rejected the request's shape or values."""


class ServiceError(RemoteError):
    """The platform failed (5xx, internal error, throttling) on every retry."""


class ProcessingError(RemoteError):
    """The platform accepted the upload but could not turn it into a model or version."""


def source_error(path: object, exc: OSError, doing: str = "read") -> SourceError:
    """The one translation of an ``OSError`` on a local file into a one-line ``SourceError``."""
    if isinstance(exc, FileNotFoundError):
        return SourceError(f"{path}: no such file")
    if isinstance(exc, PermissionError):
        return SourceError(f"{path}: permission denied")
    if isinstance(exc, IsADirectoryError):
        return SourceError(f"{path}: not a regular file")
    return SourceError(f"{path}: cannot {doing} ({exc.strerror})")
