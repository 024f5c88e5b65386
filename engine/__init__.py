"""upload-engine: concurrent, resumable multipart uploads of large scan files.

The public surface is this list; everything else is internal.
"""

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
