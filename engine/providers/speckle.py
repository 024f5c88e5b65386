"""Speckle file ingestion: one presigned PUT, then a GraphQL-driven ingestion into a model version.

The flow (``POST {server}/graphql``, ``Authorization: Bearer <token>``), per file:

1. refuse locally, before any request: a file above 5 GiB (one PUT holds at most that) or above
   ``size_limit`` (``TooLargeError``); a file whose extension and header are not a format Speckle
   ingests — ``.ifc`` opening with ``ISO-10303-21;``, ``.e57`` opening with ``ASTM-E57``
   (``FormatError``);
2. the model: ``model_id`` is checked with ``project.model(id)`` (``NotFoundError``); a name
   (default: the file's stem) is looked up with ``project.modelByName`` and created with
   ``modelMutations.create`` when the server answers ``MODEL_NOT_FOUND``;
3. ``fileUploadMutations.generateUploadUrl(projectId, fileName)`` → ``url``, ``fileId`` and
   ``additionalRequestHeaders``; the ``fileId`` (never the URL) is journaled as a fresh upload;
4. one PUT of the whole file with every additional header and
   ``Content-Type: application/octet-stream``; an expired URL gets a new ``generateUploadUrl``
   (a new ``fileId``, journaled fresh);
5. ``fileUploadMutations.startFileIngestion(projectId, modelId, fileId, etag)`` with the ETag
   exactly as the storage returned it, quotes included;
6. ``project(id).ingestion(id)`` is polled every ``poll_interval`` seconds (growing by half per
   poll, up to ten times that) within ``ingestion_deadline``, until ``success`` (its
   ``versionId``) or a terminal failure — ``failed``, ``timeout``, ``invalidInput``, ``cancelled``
   — raised as ``ProcessingError`` with the server's reason. Each change of status, message or
   progress is a ``Phase`` event.

Rules:
- ``startFileIngestion`` is not idempotent (a second call for a ``fileId`` fails with
  ``ALREADY_REGISTERED_BLOB_ERROR``). It is sent with ``retry=False``, and only after the journal
  holds the ETag, the time and the ``ingestion-requested`` mark; the ingestion id is journaled as
  soon as it is known. When the mark is there but the id is not (a crash, a lost answer, a 5xx or
  429 whose outcome is unknown) the ingestion is looked up before anything is sent again:
  exactly, on servers that list a model's ``ingestionHistory`` with each ingestion's file-upload
  ``handler.blobId`` (app.speckle.systems: the ``blobId`` is our ``fileId``); where that query is
  not in the schema, ``startFileIngestion`` is sent once more, and ``ALREADY_REGISTERED_BLOB_ERROR``
  means ours is registered: it is the model's ``latestIngestion`` created since the journaled time.
- A rerun resumes: the journal key is per server, project, model and file; a journaled part of the
  same ``fileId`` is not sent again (the blob is already stored), a journaled ingestion id is
  polled, not started, and a finished file is not touched at all (the engine's ``done`` record).
- A terminal ingestion failure voids the upload in the journal (the blob is registered and cannot
  be ingested twice), so a rerun starts over with a new ``fileId``. Running out of
  ``ingestion_deadline`` does not: a rerun keeps polling the same ingestion.
- GraphQL failures are mapped once, in ``classify``; the token goes in a header only and never
  appears in a ``repr``, a message or the journal.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread

from engine.client import Uploader
from engine.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    FormatError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProcessingError,
    RemoteError,
    ServiceError,
    TooLargeError,
)
from engine.formats import check_e57, check_ifc
from engine.graphql import GraphQLClient, GraphQLFailure
from engine.models import FileInfo, PartLimits, PartRequest, PartResult, PartSpec, UploadResult
from engine.retry import backoff_delay
from engine.target import Target, TargetContext

__all__ = [
    "MAX_UPLOAD_SIZE",
    "Speckle",
    "SpeckleCredentials",
    "SpeckleFileTarget",
    "SpeckleResult",
    "check_local",
    "classify",
]

MAX_UPLOAD_SIZE: Final = 5 * 1024**3
"""Bytes one presigned PUT may carry: the largest file Speckle can ingest this way."""

DEFAULT_SERVER: Final = "https://app.speckle.systems"
MARK_REQUESTED: Final = "ingestion-requested"

_TERMINAL_FAILURES: Final = frozenset({"failed", "invalidInput", "cancelled", "timeout"})
_FAILURE_TYPES: Final = frozenset(
    {"ModelIngestionFailedStatus", "ModelIngestionCancelledStatus", "ModelIngestionInvalidStatus"}
)
_INVALID_CODES: Final = frozenset(
    {"USER_INPUT_ERROR", "BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED", "GRAPHQL_PARSE_FAILED"}
)
_TRANSIENT_CODES: Final = frozenset({"INTERNAL_SERVER_ERROR", "RATE_LIMITED", "TOO_MANY_REQUESTS"})
_START_ROUNDS: Final = 5  # lookups (and at most this many sends) while recovering a completion
_HISTORY_LIMIT: Final = 50  # recent ingestions of the model searched for our fileId
_CLOCK_SKEW: Final = timedelta(minutes=5)  # client/server clock difference tolerated

Sleep = Callable[[float], Awaitable[None]]

# ---- GraphQL documents ---------------------------------------------------------------------------

_STATUS_FIELDS: Final = """
      statusData {
        __typename
        ... on ModelIngestionQueuedStatus { status progressMessage }
        ... on ModelIngestionProcessingStatus { status progressMessage progress }
        ... on ModelIngestionSuccessStatus { status versionId }
        ... on ModelIngestionFailedStatus { status errorReason }
        ... on ModelIngestionCancelledStatus { status cancellationMessage }
        ... on ModelIngestionInvalidStatus { status validationMessage }
      }"""

MODEL_BY_ID: Final = """
query ProjectModel($projectId: String!, $modelId: String!) {
  project(id: $projectId) {
    model(id: $modelId) { id name }
  }
}"""

MODEL_BY_NAME: Final = """
query ProjectModelByName($projectId: String!, $name: String!) {
  project(id: $projectId) {
    modelByName(name: $name) { id name }
  }
}"""

CREATE_MODEL: Final = """
mutation CreateModel($input: CreateModelInput!) {
  modelMutations {
    create(input: $input) { id name }
  }
}"""

GENERATE_UPLOAD_URL: Final = """
mutation GenerateFileUploadUrl($input: GenerateFileUploadUrlInput!) {
  fileUploadMutations {
    generateUploadUrl(input: $input) {
      url
      fileId
      additionalRequestHeaders { header value }
    }
  }
}"""

START_FILE_INGESTION: Final = f"""
mutation StartFileIngestion($input: StartFileImportInput!) {{
  fileUploadMutations {{
    startFileIngestion(input: $input) {{
      id{_STATUS_FIELDS}
    }}
  }}
}}"""

INGESTION: Final = f"""
query Ingestion($ingestionId: ID!, $projectId: String!) {{
  project(id: $projectId) {{
    ingestion(id: $ingestionId) {{
      id{_STATUS_FIELDS}
    }}
  }}
}}"""

MODEL_INGESTION_HISTORY: Final = """
query ModelIngestionHistory($projectId: String!, $modelId: String!, $limit: Int!) {
  project(id: $projectId) {
    model(id: $modelId) {
      ingestionHistory(input: { limit: $limit }) {
        items {
          id
          handler { ... on ModelIngestionFileUploadHandler { blobId } }
        }
      }
    }
  }
}"""

MODEL_LATEST_INGESTION: Final = """
query ModelLatestIngestion($projectId: String!, $modelId: String!) {
  project(id: $projectId) {
    model(id: $modelId) {
      latestIngestion { id createdAt }
    }
  }
}"""


# ---- errors --------------------------------------------------------------------------------------


def classify(failure: GraphQLFailure) -> RemoteError | None:
    """The error for a failed Speckle GraphQL call, or ``None`` when it is worth retrying."""
    op, code, message = failure.operation, failure.code, failure.message
    detail = f"{message} ({code})" if code else message
    if failure.status in (401, 403) and not code:
        # Refused before GraphQL ran: HTTP 403 {"error": "Your token is not valid."}
        return AuthenticationError(
            f"{op}: SPECKLE_TOKEN is not valid ({message or f'HTTP {failure.status}'})",
            code=f"HTTP {failure.status}",
        )
    if code in ("UNAUTHENTICATED", "UNAUTHORIZED"):
        return AuthenticationError(f"{op}: SPECKLE_TOKEN is not valid: {detail}", code=code)
    if code == "FORBIDDEN":
        return PermissionDeniedError(
            f"{op}: permission denied: {detail}; the token needs the streams:write scope and "
            "a Can edit role on the project",
            code=code,
        )
    if code == "STREAM_NOT_FOUND":
        return NotFoundError(f"{op}: project not found: {detail}", code=code)
    if code == "MODEL_NOT_FOUND":
        return NotFoundError(f"{op}: model not found: {detail}", code=code)
    if code == "NOT_FOUND":
        return NotFoundError(f"{op}: not found: {detail}", code=code)
    if code in _INVALID_CODES:
        return InvalidRequestError(f"{op}: request rejected: {detail}", code=code)
    if code == "BRANCH_NAME_ERROR":
        return InvalidRequestError(f"{op}: invalid model name: {detail}", code=code)
    if code == "BRANCH_CREATE_ERROR":
        return ConflictError(f"{op}: model not created: {detail}", code=code)
    if code == "ALREADY_REGISTERED_BLOB_ERROR":
        return ConflictError(f"{op}: file already registered: {detail}", code=code)
    if code in _TRANSIENT_CODES:
        return None
    return RemoteError(f"{op}: {detail or f'HTTP {failure.status}'}", code=code)


# ---- values --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeckleCredentials:
    """A Speckle personal access token (scope ``streams:write``). Never shown by ``repr``."""

    token: str = field(repr=False)

    def __post_init__(self) -> None:
        token = self.token.strip()
        if not token:
            raise AuthenticationError("SPECKLE_TOKEN is empty; create a personal access token")
        if any(ch.isspace() for ch in token):
            raise AuthenticationError("SPECKLE_TOKEN is malformed: it contains whitespace")
        object.__setattr__(self, "token", token)

    def __repr__(self) -> str:
        return "SpeckleCredentials(token=<redacted>)"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SpeckleCredentials:
        """Read ``SPECKLE_TOKEN`` from ``env`` (default ``os.environ``)."""
        token = (os.environ if env is None else env).get("SPECKLE_TOKEN", "")
        if not token.strip():
            raise AuthenticationError(
                "SPECKLE_TOKEN is not set; create a personal access token with the "
                "streams:write scope (Avatar > Profile > Personal Access Tokens) and export it"
            )
        return cls(token)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


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
        """Read the ids a ``SpeckleFileTarget`` returned (``upload.remote``)."""
        r = upload.remote
        return cls(
            project_id=r.get("projectId", ""),
            model_id=r.get("modelId", ""),
            file_id=r.get("fileId", ""),
            ingestion_id=r.get("ingestionId", ""),
            version_id=r.get("versionId", ""),
            upload=upload,
            seconds=upload.seconds if seconds is None else seconds,
        )


# ---- local checks --------------------------------------------------------------------------------

_CHECKS: Final = {".ifc": check_ifc, ".e57": check_e57}


def check_local(path: Path, size: int, size_limit: int | None = None) -> None:
    """Refuse what Speckle cannot take, before any request. Blocking: reads the file's head."""
    if size > MAX_UPLOAD_SIZE:
        raise TooLargeError(
            f"{path}: {size} bytes exceed the {MAX_UPLOAD_SIZE}-byte (5 GiB) limit of one "
            "Speckle upload"
        )
    if size_limit is not None and size > size_limit:
        raise TooLargeError(f"{path}: {size} bytes exceed the size limit of {size_limit} bytes")
    check = _CHECKS.get(path.suffix.lower())
    if check is None:
        raise FormatError(
            f"{path}: {path.suffix or 'no extension'}: not a format this client sends to Speckle "
            f"({', '.join(sorted(_CHECKS))})"
        )
    check(path)


# ---- the target ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Upload:
    """The presigned upload in hand. The URL stays in memory ("" when resuming from the journal)."""

    file_id: str
    url: str = ""
    headers: tuple[tuple[str, str], ...] = ()


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _need_str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ServiceError(f"malformed Speckle response: no {what}")
    return value


def _parse_time(value: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class SpeckleFileTarget(Target):
    """One file into one Speckle model: the ``Target`` the engine drives (see the module rules).

    Build it with ``Speckle.target(...)``; one instance uploads one file. ``calls`` lists the
    GraphQL operations it sent, in order (retries included).
    """

    kind = "speckle"

    def __init__(
        self,
        speckle: Speckle,
        *,
        project_id: str,
        model_name: str | None = None,
        model_id: str | None = None,
    ) -> None:
        if not project_id:
            raise ConfigError("project_id is required")
        if model_name is not None and model_id is not None:
            raise ConfigError("give model_name or model_id, not both")
        if model_name is not None and not model_name.strip():
            raise ConfigError("model_name must not be empty")
        if model_id is not None and not model_id:
            raise ConfigError("model_id must not be empty")
        self._speckle = speckle
        self.project_id = project_id
        self._model_name = model_name.strip() if model_name is not None else None
        self._model_id = model_id
        self._gql: GraphQLClient | None = None
        self._path: Path | None = None
        self._upload: _Upload | None = None
        self._history_listed = True  # until the server's schema says otherwise
        self.model_id = ""

    def __repr__(self) -> str:
        file_id = self._upload.file_id if self._upload else "?"
        return (
            f"<SpeckleFileTarget project={self.project_id} model={self.model_id or '?'} "
            f"file={file_id} calls={len(self.calls)}>"
        )

    @property
    def calls(self) -> list[str]:
        """GraphQL operation names in the order they were sent (retries included)."""
        return self._gql.calls if self._gql is not None else []

    def _model_ref(self, path: Path) -> str:
        if self._model_id is not None:
            return f"id={self._model_id}"
        return f"name={self._model_name or path.stem}"

    def journal_key(self, file: FileInfo) -> str:
        ref = self._model_ref(file.path)
        return f"speckle:{self._speckle.server}:{self.project_id}:{ref}:{file.key}"

    def _client(self, ctx: TargetContext) -> GraphQLClient:
        if self._gql is None:
            s = self._speckle
            self._gql = GraphQLClient(
                ctx.http,
                s.endpoint,
                headers=s.credentials.headers(),
                classify=classify,
                max_attempts=ctx.config.max_attempts,
                backoff_base=ctx.config.backoff_base,
                backoff_cap=ctx.config.backoff_cap,
                sleep=s.sleep,
                rng=s.rng,
            )
        return self._gql

    # ---- Target ----------------------------------------------------------------------------------

    async def prepare(self, ctx: TargetContext) -> PartLimits:
        path = ctx.file.path
        if self._path is not None and self._path != path:
            raise ConfigError("a SpeckleFileTarget uploads one file; build one per file")
        self._path = path
        limit = self._speckle.size_limit
        await anyio.to_thread.run_sync(check_local, path, ctx.file.size, limit)
        limits = PartLimits(
            min_size=0,
            max_size=MAX_UPLOAD_SIZE if limit is None else min(MAX_UPLOAD_SIZE, limit),
            max_parts=1,
            single=True,
        )
        st = ctx.journal.state
        file_id, model_id = st.remote.get("fileId", ""), st.remote.get("modelId", "")
        if file_id and model_id and MARK_REQUESTED in st.marks:
            # An earlier run asked for the ingestion: finish that one, send no bytes.
            self.model_id, self._upload = model_id, _Upload(file_id)
            ctx.phase("resuming: ingestion already requested")
            return limits
        self.model_id = await self._resolve_model(ctx)
        if file_id and st.parts:
            # The bytes are stored under this fileId already: keep it, aim it at the model.
            self._upload = _Upload(file_id)
            if model_id != self.model_id:
                ctx.journal.set_remote(modelId=self.model_id)
            ctx.phase("resuming: file already uploaded")
        else:
            await self._new_upload(ctx)
        return limits

    async def stored_parts(
        self, plan: Sequence[PartSpec], ctx: TargetContext
    ) -> dict[int, PartResult]:
        if self._upload is None or ctx.journal.state.remote.get("fileId") != self._upload.file_id:
            return {}
        return await super().stored_parts(plan, ctx)

    async def part_request(
        self, part: PartSpec, ctx: TargetContext, *, refresh: bool
    ) -> PartRequest:
        if refresh or self._upload is None or not self._upload.url:
            await self._new_upload(ctx)
        assert self._upload is not None
        return PartRequest(self._upload.url, "PUT", self._upload.headers)

    async def complete(self, parts: Sequence[PartResult], ctx: TargetContext) -> Mapping[str, str]:
        if len(parts) != 1 or self._upload is None:
            raise ConfigError(f"a Speckle upload is exactly one part, got {len(parts)}")
        etag = parts[0].etag
        st = ctx.journal.state
        ingestion_id = st.remote.get("ingestionId", "")
        if not ingestion_id and MARK_REQUESTED in st.marks:
            ingestion_id = await self._recover_ingestion(ctx, etag)
        elif not ingestion_id:
            ingestion_id = await self._start_ingestion(ctx, etag)
        version_id = await self._wait_ingestion(ctx, ingestion_id)
        return {
            "projectId": self.project_id,
            "modelId": self.model_id,
            "fileId": self._upload.file_id,
            "ingestionId": ingestion_id,
            "versionId": version_id,
        }

    # ---- the model -------------------------------------------------------------------------------

    async def _resolve_model(self, ctx: TargetContext) -> str:
        gql = self._client(ctx)
        if self._model_id is not None:
            data = await gql.execute(
                MODEL_BY_ID, {"projectId": self.project_id, "modelId": self._model_id}
            )
            return _need_str(_dig(data, "project", "model", "id"), "model id")
        name = self._model_name or ctx.file.path.stem
        found = await self._model_by_name(gql, name)
        if found:
            ctx.phase(f"model {name!r} exists ({found})")
            return found
        try:
            data = await gql.execute(
                CREATE_MODEL, {"input": {"projectId": self.project_id, "name": name}}
            )
        except ConflictError:
            # Taken meanwhile: by another run, or by our own create whose answer was lost.
            found = await self._model_by_name(gql, name)
            if found:
                return found
            raise
        model_id = _need_str(_dig(data, "modelMutations", "create", "id"), "model id")
        ctx.phase(f"model {name!r} created ({model_id})")
        return model_id

    async def _model_by_name(self, gql: GraphQLClient, name: str) -> str:
        """The id of the model called ``name`` (case-insensitively), "" if there is none."""
        try:
            data = await gql.execute(MODEL_BY_NAME, {"projectId": self.project_id, "name": name})
        except NotFoundError as exc:
            if exc.code == "MODEL_NOT_FOUND":
                return ""
            raise
        return _need_str(_dig(data, "project", "modelByName", "id"), "model id")

    # ---- the upload ------------------------------------------------------------------------------

    async def _new_upload(self, ctx: TargetContext) -> None:
        """Ask for a presigned URL; its new fileId voids whatever the journal held."""
        data = await self._client(ctx).execute(
            GENERATE_UPLOAD_URL,
            {"input": {"projectId": self.project_id, "fileName": ctx.file.path.name}},
        )
        out = _dig(data, "fileUploadMutations", "generateUploadUrl")
        url = _need_str(_dig(out, "url"), "upload url")
        file_id = _need_str(_dig(out, "fileId"), "fileId")
        headers = {"content-type": ("Content-Type", "application/octet-stream")}
        for h in _dig(out, "additionalRequestHeaders") or ():
            name, value = _dig(h, "header"), _dig(h, "value")
            if isinstance(name, str) and name and isinstance(value, str):
                headers[name.lower()] = (name, value)  # the server's word wins, Content-Type too
        self._upload = _Upload(file_id, url, tuple(headers.values()))
        ctx.journal.set_remote(
            fresh=True, projectId=self.project_id, modelId=self.model_id, fileId=file_id
        )

    # ---- the ingestion ---------------------------------------------------------------------------

    def _start_variables(self, etag: str) -> dict[str, Any]:
        assert self._upload is not None
        return {
            "input": {
                "projectId": self.project_id,
                "modelId": self.model_id,
                "fileId": self._upload.file_id,
                "etag": etag,  # exactly as storage returned it, quotes included
            }
        }

    async def _send_start(self, ctx: TargetContext, etag: str) -> str:
        """Send ``startFileIngestion`` once; journal the id it returns."""
        data = await self._client(ctx).execute(
            START_FILE_INGESTION, self._start_variables(etag), retry=False
        )
        ingestion_id = _need_str(
            _dig(data, "fileUploadMutations", "startFileIngestion", "id"), "ingestion id"
        )
        ctx.journal.set_remote(ingestionId=ingestion_id)
        return ingestion_id

    async def _start_ingestion(self, ctx: TargetContext, etag: str) -> str:
        # Journal first (fsynced): a rerun must know the call may have happened.
        ctx.journal.set_remote(etag=etag, requestedAt=datetime.now(UTC).isoformat())
        ctx.journal.mark(MARK_REQUESTED)
        ctx.phase("starting ingestion")
        try:
            return await self._send_start(ctx, etag)
        except (ServiceError, ConflictError) as exc:  # outcome unknown, or registered: look
            return await self._recover_ingestion(ctx, etag, exc)

    async def _recover_ingestion(
        self, ctx: TargetContext, etag: str, last: RemoteError | None = None
    ) -> str:
        """The call may have happened: find its ingestion; send it again only if none exists.

        ``last`` is why we are unsure: a ``ServiceError`` (5xx, 429, lost connection: unknown
        outcome) or a ``ConflictError`` (ALREADY_REGISTERED_BLOB_ERROR: registered)."""
        assert self._upload is not None
        ctx.phase("looking for the ingestion requested earlier")
        sends = 0
        while True:
            exact, found = await self._find_ingestion(ctx)
            if not found and not exact and isinstance(last, ConflictError):
                found = await self._latest_ingestion(ctx)
            if found:
                ctx.journal.set_remote(ingestionId=found)
                return found
            if isinstance(last, ConflictError):
                raise ConflictError(
                    f"StartFileIngestion: file {self._upload.file_id} is registered, but no "
                    f"ingestion of it was found on model {self.model_id}: {last}",
                    code=last.code,
                )
            if sends == _START_ROUNDS:
                raise ServiceError(
                    f"StartFileIngestion: no answer for file {self._upload.file_id} after "
                    f"{sends} more tries; last: {last}",
                    code=last.code if last is not None else "",
                )
            if isinstance(last, ServiceError):
                # retry=False does not wait out a Retry-After: pause before sending again.
                cfg, s = ctx.config, self._speckle
                delay = backoff_delay(
                    sends + 1, base=cfg.backoff_base, cap=cfg.backoff_cap, rng=s.rng
                )
                await s.sleep(max(delay, s.poll_interval))
            sends += 1
            try:
                return await self._send_start(ctx, etag)
            except (ConflictError, ServiceError) as exc:  # registered after all / still unsure
                last = exc

    async def _find_ingestion(self, ctx: TargetContext) -> tuple[bool, str]:
        """(whether the server can list ingestions by file, the id of ours or "")."""
        assert self._upload is not None
        if not self._history_listed:
            return False, ""
        try:
            data = await self._client(ctx).execute(
                MODEL_INGESTION_HISTORY,
                {"projectId": self.project_id, "modelId": self.model_id, "limit": _HISTORY_LIMIT},
            )
        except InvalidRequestError as exc:
            if exc.code == "GRAPHQL_VALIDATION_FAILED":  # no ingestionHistory in this schema
                self._history_listed = False  # do not ask again
                return False, ""
            raise
        items = _dig(data, "project", "model", "ingestionHistory", "items")
        for item in items or ():
            if _dig(item, "handler", "blobId") == self._upload.file_id:
                return True, _need_str(_dig(item, "id"), "ingestion id")
        return True, ""

    async def _latest_ingestion(self, ctx: TargetContext) -> str:
        """The model's latest ingestion if it was created since our journaled request, or ""."""
        data = await self._client(ctx).execute(
            MODEL_LATEST_INGESTION, {"projectId": self.project_id, "modelId": self.model_id}
        )
        latest = _dig(data, "project", "model", "latestIngestion")
        since = _parse_time(ctx.journal.state.remote.get("requestedAt", ""))
        created = _parse_time(_dig(latest, "createdAt"))
        if since is None or created is None or created < since - _CLOCK_SKEW:
            return ""
        return _need_str(_dig(latest, "id"), "ingestion id")

    async def _wait_ingestion(self, ctx: TargetContext, ingestion_id: str) -> str:
        """Poll until success (return the version id) or a terminal failure (raise)."""
        s = self._speckle
        gql = self._client(ctx)
        deadline = time.monotonic() + s.ingestion_deadline
        delay = s.poll_interval
        seen: tuple[Any, ...] = ()
        while True:
            data = await gql.execute(
                INGESTION, {"ingestionId": ingestion_id, "projectId": self.project_id}
            )
            sd = _dig(data, "project", "ingestion", "statusData")
            if not isinstance(sd, Mapping):
                raise ServiceError(f"Ingestion: malformed answer for ingestion {ingestion_id}")
            status = str(sd.get("status") or "")
            message, progress = sd.get("progressMessage"), sd.get("progress")
            if (status, message, progress) != seen:
                seen = (status, message, progress)
                ctx.phase(
                    f"ingestion {status}" + (f": {message}" if message else ""),
                    float(progress) if isinstance(progress, int | float) else None,
                )
            if status == "success":
                return _need_str(sd.get("versionId"), "versionId")
            if status in _TERMINAL_FAILURES or sd.get("__typename") in _FAILURE_TYPES:
                reason = (
                    sd.get("errorReason")
                    or sd.get("validationMessage")
                    or sd.get("cancellationMessage")
                    or "no reason given"
                )
                ctx.journal.set_remote(fresh=True)  # the blob is spent: a rerun starts over
                raise ProcessingError(
                    f"{ctx.file.path.name}: Speckle ingestion {ingestion_id} ended "
                    f"{status or sd.get('__typename')}: {reason}",
                    code=status,
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProcessingError(
                    f"{ctx.file.path.name}: Speckle ingestion {ingestion_id} still {status} "
                    f"after {s.ingestion_deadline:g} s; rerun to keep waiting",
                    code="deadline",
                )
            await s.sleep(min(delay, left))
            delay = min(delay * 1.5, s.poll_interval * 10)


# ---- the provider --------------------------------------------------------------------------------


class Speckle:
    """Uploads files into Speckle models (see the module docstring for the flow and rules).

    server:             base URL; the GraphQL endpoint is ``server + "/graphql"``.
    poll_interval:      seconds between ingestion status queries (growing up to ten times this).
    ingestion_deadline: seconds to wait for an ingestion to end (a rerun keeps waiting on it).
    size_limit:         bytes; larger files are refused up front (5 GiB is the limit in any case).
    sleep:              injected wait for polling and backoff (tests pass a fast one).
    """

    def __init__(
        self,
        credentials: SpeckleCredentials,
        *,
        server: str = DEFAULT_SERVER,
        poll_interval: float = 1.0,
        ingestion_deadline: float = 3600.0,
        size_limit: int | None = None,
        sleep: Sleep = anyio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        server = server.rstrip("/")
        if not server.startswith(("http://", "https://")):
            raise ConfigError(f"server must be an http(s) URL, got {server!r}")
        if not poll_interval > 0:
            raise ConfigError(f"poll_interval must be positive, got {poll_interval}")
        if not ingestion_deadline > 0:
            raise ConfigError(f"ingestion_deadline must be positive, got {ingestion_deadline}")
        if size_limit is not None and size_limit < 1:
            raise ConfigError(f"size_limit must be positive, got {size_limit}")
        self.credentials = credentials
        self.server = server
        self.endpoint = server + "/graphql"
        self.poll_interval = poll_interval
        self.ingestion_deadline = ingestion_deadline
        self.size_limit = size_limit
        self.sleep = sleep
        self.rng = rng or random.Random()

    def __repr__(self) -> str:
        return f"<Speckle {self.server}>"

    def target(
        self, *, project_id: str, model_name: str | None = None, model_id: str | None = None
    ) -> SpeckleFileTarget:
        """A target for one file, for ``Uploader.upload`` or ``Uploader.upload_many``."""
        return SpeckleFileTarget(
            self, project_id=project_id, model_name=model_name, model_id=model_id
        )

    async def upload(
        self,
        uploader: Uploader,
        path: str | os.PathLike[str],
        *,
        project_id: str,
        model_name: str | None = None,
        model_id: str | None = None,
    ) -> SpeckleResult:
        """Upload ``path`` into the model (default: one named after the file's stem, created if
        needed); return once its version exists. Raises one ``UploadError``."""
        started = time.monotonic()
        target = self.target(project_id=project_id, model_name=model_name, model_id=model_id)
        result = await uploader.upload(path, target)
        return SpeckleResult.from_upload(result, time.monotonic() - started)
