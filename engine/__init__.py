"""upload-engine: concurrent, resumable multipart uploads of large scan files.

The public surface is this list; everything else is internal.
"""

from engine.client import Uploader
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
from engine.models import FileInfo, PartLimits, PartRequest, PartResult, PartSpec, UploadResult
from engine.plan import plan_parts
from engine.providers.matterport import Matterport, MatterportCredentials, MatterportResult
from engine.providers.s3 import S3Target
from engine.providers.speckle import Speckle, SpeckleCredentials, SpeckleResult
from engine.target import PresignedMultipart, Target, TargetContext

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BytesSent",
    "ConfigError",
    "ConflictError",
    "Event",
    "EventHook",
    "FileFailed",
    "FileFinished",
    "FileInfo",
    "FileStarted",
    "FormatError",
    "GiB",
    "InputError",
    "InterruptedUpload",
    "InvalidRequestError",
    "KiB",
    "Matterport",
    "MatterportCredentials",
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
    "ProcessingError",
    "QuotaExceededError",
    "RemoteError",
    "RetriesExhaustedError",
    "S3Target",
    "ServiceError",
    "SourceChangedError",
    "SourceError",
    "Speckle",
    "SpeckleCredentials",
    "SpeckleResult",
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
