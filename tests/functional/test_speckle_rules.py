"""The Speckle client's pure decisions: which API a server's answers describe, what an error
means, how requests are paced, how a status reads and how the time left is shown.

Each case is the real server's answer as its public source writes it (the file is named in
the test); no network, no loop.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.clock import FakeClock
from engine.errors import (
    AuthenticationError,
    ConflictError,
    FormatError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ServiceError,
    TooLargeError,
)
from engine.graphql import GraphQLFailure
from engine.providers.speckle.errors import check_local, classify, input_refusal
from engine.providers.speckle.legacy import rest_outcome
from engine.providers.speckle.pacing import Pacer
from engine.providers.speckle.server import ServerApi, choose_api, read_fields, version_api
from engine.providers.speckle.status import left_text, read_status, read_upload

# ---- which API -----------------------------------------------------------------------------------


def _types(**fields: list[str]) -> dict[str, object]:
    """An introspection answer: each type's field names (``None`` for a type not in the schema)."""
    names = ("FileUploadMutations", "GenerateFileUploadUrlOutput", "Model", "Subscription")
    return {
        t: ({"fields": [{"name": f} for f in fields[t]]} if t in fields else None) for t in names
    }


V3 = _types(
    FileUploadMutations=["generateUploadUrl", "startFileIngestion"],
    GenerateFileUploadUrlOutput=["url", "fileId", "additionalRequestHeaders"],
    Model=["id", "latestIngestion", "ingestionHistory"],
    Subscription=["projectModelIngestionUpdated"],
)
# packages/server/assets/fileuploads/typedefs/fileuploads.graphql (the public server)
V2 = _types(
    FileUploadMutations=["generateUploadUrl", "startFileImport", "finishFileImport"],
    GenerateFileUploadUrlOutput=["url", "fileId"],
    Model=["id", "uploads", "pendingImportedVersions"],
    Subscription=["projectPendingVersionsUpdated"],
)
LEGACY = _types(Model=["id", "pendingImportedVersions"], Subscription=["projectUpdated"])


@pytest.mark.parametrize(
    ("answer", "forced", "api", "live", "headers", "uploads"),
    [
        (V3, "auto", "v3", True, True, False),
        (V2, "auto", "v2", False, False, True),
        (LEGACY, "auto", "rest", False, False, False),
        (V3, "v2", "v2", True, True, False),  # forced: the capabilities are still read
        (V2, "rest", "rest", False, False, True),
    ],
)
def test_the_schema_tells_the_api(
    answer: dict[str, object], forced: str, api: str, live: bool, headers: bool, uploads: bool
) -> None:
    chosen = choose_api(read_fields(answer), "dev", 104857600, forced)
    assert (chosen.api, chosen.live, chosen.headers, chosen.uploads) == (
        api,
        live,
        headers,
        uploads,
    )
    assert chosen.known and chosen.blob_limit == 104857600 and chosen.version == "dev"


@pytest.mark.parametrize(
    ("version", "api"),
    [
        ("3.0.3", "v3"),  # the SDKs: "Model Ingestion API is available for server versions 3.0.3"
        ("3.1.0-alpha.7", "v3"),
        ("2.25.8", "v2"),  # FileImportResource: "Only works on servers version >=2.25.8"
        ("2.31.14", "v2"),
        ("2.25.7", "rest"),
        ("2.5", "rest"),
        ("dev", None),  # envHelper.ts getServerVersion(): SPECKLE_SERVER_VERSION || 'dev'
        ("", None),
    ],
)
def test_without_introspection_the_version_tells(version: str, api: str | None) -> None:
    assert version_api(version) == api
    chosen = choose_api(None, version, None, "auto")
    assert chosen == ServerApi(api or "v3", version, None, live=(api or "v3") == "v3")
    assert not chosen.known  # a guess: the first document that fails validation corrects it


# ---- errors --------------------------------------------------------------------------------------


def _failure(code: str, message: str = "boom", status: int = 200) -> GraphQLFailure:
    return GraphQLFailure("Op", status, code, message, None)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("BRANCH_NOT_FOUND", NotFoundError),  # core/errors/branch.ts BranchNotFoundError
        ("MODEL_NOT_FOUND", NotFoundError),  # core/errors/model.ts ModelNotFoundError
        ("NOT_FOUND_ERROR", NotFoundError),  # shared/errors/index.ts NotFoundError
        ("STREAM_NOT_FOUND", NotFoundError),
        ("FORBIDDEN", PermissionDeniedError),
        ("UNAUTHORIZED", AuthenticationError),
        ("BAD_REQUEST_ERROR", InvalidRequestError),  # "File uploads are not enabled ..."
        ("ALREADY_REGISTERED_BLOB_ERROR", ConflictError),  # blobstorage/errors/index.ts
        ("STORED_BLOB_ACCESS_ERROR", InvalidRequestError),
        ("UNSUPPORTED_FILE_TYPE", InvalidRequestError),  # fileuploads/helpers/errors.ts
        ("RATE_LIMIT_ERROR", type(None)),  # core/errors/ratelimit.ts: transient
        ("INTERNAL_SERVER_ERROR", type(None)),
    ],
)
def test_codes(code: str, error: type) -> None:
    got = classify(_failure(code))
    assert isinstance(got, error)
    if got is not None:
        assert got.code == code and str(got).startswith("Op: ")


@pytest.mark.parametrize(
    ("code", "message", "error"),
    [
        # blobstorage/services/presigned.ts registerCompletedUploadFactory, first call:
        (
            "USER_INPUT_ERROR",
            "File size exceeds maximum allowed size of 100 bytes. Actual size: 200 bytes",
            TooLargeError,
        ),
        # ... and every later one (the blob is marked with this uploadError):
        (
            "ALREADY_REGISTERED_BLOB_ERROR",
            "[FILE_SIZE_EXCEEDED] File size exceeds maximum allowed size for the project at "
            "the time of upload",
            TooLargeError,
        ),
        ("FILE_SIZE_EXCEEDED", "too big", TooLargeError),
        (
            "UNSUPPORTED_FILE_TYPE",
            "The provided file type is not supported for importing.",
            FormatError,
        ),
        ("USER_INPUT_ERROR", 'ETag mismatch: expected "abc"', type(None)),
        ("ALREADY_REGISTERED_BLOB_ERROR", "Blob already registered and completed", type(None)),
    ],
)
def test_refusals_about_the_file(code: str, message: str, error: type) -> None:
    remote = classify(_failure(code, message))
    assert remote is not None
    got = input_refusal(remote, Path("tower.ifc"), 200)
    assert isinstance(got, error)
    if got is not None:
        assert str(got).startswith("tower.ifc: ") and message in str(got)


def test_other_extensions_go_to_the_server(tmp_path: Path) -> None:
    for name in ("mesh.obj", "part.STL", "plan.dwg", "model.3dm", "cloud.las"):
        path = tmp_path / name
        path.write_bytes(b"anything")
        check_local(path, 8)  # the server decides
    bare = tmp_path / "README"
    bare.write_bytes(b"ISO-10303-21;\n")
    with pytest.raises(FormatError, match="no extension: not a format"):
        check_local(bare, 14)  # presigned.ts: 'File name must have a valid extension'
    wrong = tmp_path / "tower.ifc"
    wrong.write_bytes(b"solid cube\n")
    with pytest.raises(FormatError, match="not an IFC file"):
        check_local(wrong, 11)


# ---- the legacy REST route (modules/fileuploads/rest/router.ts) ----------------------------------


def test_rest_answers() -> None:
    ok = {"uploadResults": [{"blobId": "abc123", "fileName": "t.ifc", "fileSize": 9}]}
    assert rest_outcome(201, orjson.dumps(ok), None) == "abc123"
    # busboy's file size limit: markUploadOverFileSizeLimitFactory (blobstorage management.ts)
    over = {
        "uploadResults": [
            {"blobId": "x", "uploadStatus": 2, "uploadError": "File size limit reached"}
        ]
    }
    refused = rest_outcome(201, orjson.dumps(over), None)
    assert isinstance(refused, InvalidRequestError)
    assert isinstance(input_refusal(refused, Path("t.ifc"), 9), TooLargeError)
    assert rest_outcome(429, b'{"error": {"code": "RATE_LIMIT_ERROR"}}', 0.75) == 0.75
    body = (
        b'{"error": {"message": "Branch {branchName} was not found", "code": "BRANCH_NOT_FOUND"}}'
    )
    missing = rest_outcome(404, body, None)
    assert isinstance(missing, NotFoundError) and missing.code == "BRANCH_NOT_FOUND"
    # helpers/rest.ts UploadRequestErrorMessage
    bad = rest_outcome(
        400, b'{ "error": "Upload request error. The server logs may have more details." }', None
    )
    assert isinstance(bad, InvalidRequestError) and "Upload request error" in str(bad)
    assert isinstance(rest_outcome(401, b"{}", None), AuthenticationError)
    assert isinstance(rest_outcome(502, b"<html>bad gateway</html>", None), ServiceError)
    assert isinstance(rest_outcome(201, b"{}", None), ServiceError)


# ---- pacing (core/rest/ratelimiter.ts: X-RateLimit-Remaining) ------------------------------------


def test_pacing_spreads_the_last_points_over_the_window() -> None:
    clock = FakeClock()
    pacer = Pacer(clock, low=10, window=1.0)
    assert pacer.reserve() == 0.0  # no header seen yet
    pacer.seen({"X-RateLimit-Remaining": "40"})
    assert pacer.reserve() == 0.0
    pacer.seen({"X-RateLimit-Remaining": "3"})
    # Requests sent at once take the next free slots, a slot being window / (left + 1).
    assert [pacer.reserve() for _ in range(5)] == pytest.approx(
        [0.0, 0.25, 0.25 + 1 / 3, 0.25 + 1 / 3 + 0.5, 0.25 + 1 / 3 + 0.5 + 1.0]
    )
    pacer.seen({"X-RateLimit-Remaining": "0"})
    clock._elapsed += 1.5  # the window has turned over since: no pause
    assert pacer.reserve() == 0.0
    pacer.seen({"Retry-After": "1"})  # a 429 carries no X-RateLimit-Remaining: ignored here
    assert pacer.reserve() == 0.0


# ---- statuses ------------------------------------------------------------------------------------


def test_statuses_read_from_both_apis() -> None:
    v3 = read_status(
        {
            "__typename": "ModelIngestionProcessingStatus",
            "status": "processing",
            "progressMessage": "Converting",
            "progress": 0.5,
        }
    )
    assert (v3.status, v3.message, v3.progress, v3.done) == ("processing", "Converting", 0.5, False)
    failed = read_status(
        {
            "__typename": "ModelIngestionInvalidStatus",
            "status": "invalidInput",
            "validationMessage": "no geometry",
        }
    )
    assert failed.failure == "no geometry" and failed.done
    # fileuploads.graphql: "0 = queued, 1 = processing, 2 = success, 3 = error"
    assert read_upload({"convertedStatus": 1}).status == "processing"
    done = read_upload({"convertedStatus": 2, "convertedVersionId": "v1"})
    assert done.version_id == "v1" and done.done
    error = read_upload({"convertedStatus": 3, "convertedMessage": "IFC parse failed"})
    assert (error.status, error.failure) == ("failed", "IFC parse failed")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1800, "30 min left"),
        (121, "3 min left"),
        (119.2, "120 s left"),
        (0.05, "1 s left"),
        (-3, "0 s left"),
    ],
)
def test_time_left(seconds: float, text: str) -> None:
    assert left_text(seconds) == text
