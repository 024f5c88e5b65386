"""The public surface is a list, pinned here: changing it is a deliberate act."""

from __future__ import annotations

import engine

EXPECTED = {
    "AuthenticationError", "BytesSent", "ConfigError", "ConflictError", "Event", "EventHook",
    "FileFailed", "FileFinished", "FileInfo", "FileStarted", "FormatError", "GiB", "InputError",
    "InterruptedUpload", "InvalidRequestError", "KiB", "Matterport", "MatterportCredentials",
    "MatterportResult", "MiB", "NotFoundError", "PartDone", "PartLimits", "PartRejectedError",
    "PartRequest", "PartResult", "PartRetry", "PartSpec", "PermissionDeniedError", "Phase",
    "PresignedMultipart", "ProcessingError", "QuotaExceededError", "RemoteError",
    "RetriesExhaustedError", "S3Target", "ServiceError", "SourceChangedError", "SourceError",
    "Speckle", "SpeckleCredentials", "SpeckleResult", "Target", "TargetContext",
    "TooLargeError", "TransferError", "UploadConfig", "UploadError", "UploadResult", "Uploader",
    "__version__", "plan_parts",
    # the typed results, the clock, the retry policy and what providers are handed
    "Clock", "FakeClock", "SystemClock", "StateError", "PresignedRemote", "Remote",
    "MatterportFileRemote", "S3Object", "SpeckleVersion", "RetryPolicy", "HasServices",
    "Services",
    "S3Clients",  # one botocore client for many S3 targets
    "Concurrency",  # the adaptive window's changes
}  # fmt: skip


def test_all_is_pinned() -> None:
    assert set(engine.__all__) == EXPECTED
    for name in engine.__all__:
        assert hasattr(engine, name), name


def test_every_public_error_derives_from_upload_error() -> None:
    for name in engine.__all__:
        obj = getattr(engine, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, engine.UploadError), name
