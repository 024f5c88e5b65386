"""upload-engine: concurrent, resumable multipart uploads of large scan files.

The public surface is this list; everything else is internal. Each name is imported when it is
first used (``engine.lazy``): ``import engine``, which every ``engine.*`` import runs first,
loads nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import exports

if TYPE_CHECKING:
    from engine.client import Uploader
    from engine.clock import Clock, FakeClock, SystemClock
    from engine.config import GiB, KiB, MiB, UploadConfig
    from engine.errors import (
        AuthenticationError,
        ConfigError,
        ConflictError,
        FormatError,
        InputError,
        InterruptedUpload,
        InvalidRequestError,
        NotFoundError,
        PartRejectedError,
        PermissionDeniedError,
        ProcessingError,
        QuotaExceededError,
        RemoteError,
        RetriesExhaustedError,
        ServiceError,
        SourceChangedError,
        SourceError,
        StateError,
        TooLargeError,
        TransferError,
        UploadError,
    )
    from engine.events import (
        BytesSent,
        Concurrency,
        Event,
        EventHook,
        FileFailed,
        FileFinished,
        FileStarted,
        PartDone,
        PartRetry,
        Phase,
    )
    from engine.models import (
        FileInfo,
        PartLimits,
        PartRequest,
        PartResult,
        PartSpec,
        PresignedRemote,
        Remote,
        UploadResult,
    )
    from engine.plan import plan_parts
    from engine.providers.matterport import (
        Matterport,
        MatterportCredentials,
        MatterportFileRemote,
        MatterportResult,
    )
    from engine.providers.s3 import S3Clients, S3Object, S3Target
    from engine.providers.speckle import Speckle, SpeckleCredentials, SpeckleResult, SpeckleVersion
    from engine.retry import RetryPolicy
    from engine.target import HasServices, PresignedMultipart, Services, Target, TargetContext

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BytesSent",
    "Clock",
    "Concurrency",
    "ConfigError",
    "ConflictError",
    "Event",
    "EventHook",
    "FakeClock",
    "FileFailed",
    "FileFinished",
    "FileInfo",
    "FileStarted",
    "FormatError",
    "GiB",
    "HasServices",
    "InputError",
    "InterruptedUpload",
    "InvalidRequestError",
    "KiB",
    "Matterport",
    "MatterportCredentials",
    "MatterportFileRemote",
    "MatterportResult",
    "MiB",
    "NotFoundError",
    "PartDone",
    "PartLimits",
    "PartRejectedError",
    "PartRequest",
    "PartResult",
    "PartRetry",
    "PartSpec",
    "PermissionDeniedError",
    "Phase",
    "PresignedMultipart",
    "PresignedRemote",
    "ProcessingError",
    "QuotaExceededError",
    "Remote",
    "RemoteError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "S3Clients",
    "S3Object",
    "S3Target",
    "ServiceError",
    "Services",
    "SourceChangedError",
    "SourceError",
    "Speckle",
    "SpeckleCredentials",
    "SpeckleResult",
    "SpeckleVersion",
    "StateError",
    "SystemClock",
    "Target",
    "TargetContext",
    "TooLargeError",
    "TransferError",
    "UploadConfig",
    "UploadError",
    "UploadResult",
    "Uploader",
    "__version__",
    "plan_parts",
]

#: the modules of the names above, for the interpreter (mypy reads the imports)
_HOMES = {
    "engine.client": "Uploader",
    "engine.clock": "Clock FakeClock SystemClock",
    "engine.config": "GiB KiB MiB UploadConfig",
    "engine.errors": "AuthenticationError ConfigError ConflictError FormatError InputError "
    "InterruptedUpload InvalidRequestError NotFoundError PartRejectedError PermissionDeniedError "
    "ProcessingError QuotaExceededError RemoteError RetriesExhaustedError ServiceError "
    "SourceChangedError SourceError StateError TooLargeError TransferError UploadError",
    "engine.events": "BytesSent Concurrency Event EventHook FileFailed FileFinished FileStarted "
    "PartDone "
    "PartRetry Phase",
    "engine.models": "FileInfo PartLimits PartRequest PartResult PartSpec PresignedRemote Remote "
    "UploadResult",
    "engine.plan": "plan_parts",
    "engine.providers.matterport": "Matterport MatterportCredentials MatterportFileRemote "
    "MatterportResult",
    "engine.providers.s3": "S3Clients S3Object S3Target",
    "engine.providers.speckle": "Speckle SpeckleCredentials SpeckleResult SpeckleVersion",
    "engine.retry": "RetryPolicy",
    "engine.target": "HasServices PresignedMultipart Services Target TargetContext",
}

if not TYPE_CHECKING:  # a module __getattr__ seen by mypy would make every name Any
    __getattr__, __dir__ = exports(__name__, _HOMES)
