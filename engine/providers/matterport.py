"""Matterport Import API: several E57 files, one import session, one model.

The flow (seed ``000``; the GraphQL documents below are the seed's, verbatim)::

    addImportSession(organizationId, processType: E57, name, description)     -> session id
    AddE57Object(e57: {id, file: {clientId, name, type, size}})               one per file
    -- per file, every file at once under the Uploader's one budget (MatterportFileTarget):
    beginUpload                                          PENDING -> STARTED
    requestPartUpload(part: 0, size: <file size>)        minSize/maxSize: the part limits
    requestPartUpload(part: n - 1, size: <part size>)    per part: url, method, headers
    PUT the bytes, keep each ETag                        (the engine)
    completeUpload(completedParts: [{headers: [{key: "ETag", value}]}, ...])  part order
    --
    commitImportSession                                  the platform builds the model
    importSession                                        polled until modelId is set

Rules:
- every file is checked before the first request: it exists and is an E57 (``ASTM-E57``
  header); the first bad one fails the import with a ``SourceError`` / ``FormatError``;
- parts are zero-based on the wire (``part: n - 1`` for the engine's part ``n``); the server
  decides part sizes, so ``prepare`` asks for part 0 with the whole size first and plans from
  its ``minSize``/``maxSize`` (one part when both equal the file size);
- ETags go to ``completeUpload`` exactly as the storage returned them, in part order;
- resume: the journal holds the session id (key ``matterport-session:<org>:<paths>``), each
  file's clientId and ids (key ``matterport:<session>:<path>``) and each part's ETag; never a
  token or a URL. A rerun with the same, unchanged files continues the same session, asks the
  server what it holds (``importSession``, ``importFilePartsUploadStatus``) and sends only what
  is missing; the server's word wins over the journal. A changed file starts a new session
  (or is refused, with ``on_change="refuse"``);
- a mutation that may already have happened (a retry after a lost answer, a crash) is
  reconciled against ``importSession`` rather than failing: a file already STARTED or
  COMPLETED, a session already committed. ``commit`` is journaled before it is sent;
- errors: ``extensions.code`` maps to one ``RemoteError`` subclass (``classify``) and fails
  fast, except ``error.internal`` (and HTTP 429/5xx), which ``GraphQLClient`` retries; every
  message is one line that names the operation; one error per import (the first file's);
- ``Engine.drain()`` (a graceful Ctrl-C) stops the import before commit, or while it waits
  for the model, with ``InterruptedUpload``; a rerun continues from the journal;
- waiting for the model polls ``importSession`` every ``poll_interval`` seconds, growing
  gently, for at most ``model_deadline`` seconds, then raises a ``ProcessingError`` naming the
  session (a rerun picks the same session up again).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio
import orjson

from engine.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    InterruptedUpload,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProcessingError,
    QuotaExceededError,
    RemoteError,
    ServiceError,
    SourceChangedError,
    UploadError,
)
from engine.events import Phase
from engine.formats import check_e57
from engine.graphql import GraphQLClient, GraphQLFailure
from engine.journal import FileJournal
from engine.models import FileInfo, PartLimits, PartRequest, PartResult, PartSpec, UploadResult
from engine.target import Target, TargetContext
from engine.transfer import Engine

if TYPE_CHECKING:
    from engine.client import Uploader

__all__ = [
    "ADD_E57_OBJECT",
    "ADD_IMPORT_SESSION",
    "BEGIN_UPLOAD",
    "COMMIT_IMPORT_SESSION",
    "COMPLETE_UPLOAD",
    "ENDPOINT",
    "IMPORT_FILE_PARTS_UPLOAD_STATUS",
    "IMPORT_SESSION",
    "LIST_IMPORT_SESSIONS",
    "REQUEST_PART_UPLOAD",
    "Matterport",
    "MatterportCredentials",
    "MatterportFile",
    "MatterportFileTarget",
    "MatterportResult",
    "classify",
]

ENDPOINT: Final = "https://api.matterport.com/api/import/graph"
SESSION_KEY_PREFIX: Final = "matterport-session:"
FILE_TYPE: Final = "application/octet-stream"
_PROBES: Final = 3  # smaller first parts tried when the whole size is refused

PENDING: Final = "PENDING"
STARTED: Final = "STARTED"
COMPLETED: Final = "COMPLETED"

# ---- the seed's documents, verbatim ------------------------------------------------------------

ADD_IMPORT_SESSION: Final = """\
mutation addImportSession(
  $organizationId: ID!
  $processType: ProcessType!
  $name: String
  $description: String
) {
  addImportSession(
    organizationId: $organizationId
    processType: $processType
    name: $name
    description: $description
  ) {
    id
    organizationId
    created
    modified
    processType
    name
    description
  }
}
"""

ADD_E57_OBJECT: Final = """\
mutation AddE57Object($importSessionId: ID!, $e57: E57ObjectInput!) {
  addE57Object(importSessionId: $importSessionId, e57: $e57) {
    id
    clientId
    files {
      id
      clientId
      name
      type
      size
      uploadStatus
    }
  }
}
"""

BEGIN_UPLOAD: Final = """\
mutation beginUpload($importSessionId: ID!, $importFileId: ID!) {
  beginUpload(importSessionId: $importSessionId, importFileId: $importFileId) {
    id
    clientId
    name
    type
    size
    uploadStatus
  }
}
"""

REQUEST_PART_UPLOAD: Final = """\
mutation requestPartUpload(
  $importSessionId: ID!
  $importFileId: ID!
  $part: Int!
  $size: Long!
) {
  requestPartUpload(
    importSessionId: $importSessionId
    importFileId: $importFileId
    part: $part
    size: $size
  ) {
    url
    minSize
    maxSize
    headers {
      key
      value
    }
    method
    completed
    partNumber
  }
}
"""

COMPLETE_UPLOAD: Final = """\
mutation completeUpload(
  $importSessionId: ID!
  $importFileId: ID!
  $completedParts: [CompletedPartInput!]!
) {
  completeUpload(
    importSessionId: $importSessionId
    importFileId: $importFileId
    completedParts: $completedParts
  ) {
    id
    clientId
    name
    type
    size
    uploadStatus
  }
}
"""

COMMIT_IMPORT_SESSION: Final = """\
mutation commitImportSession($importSessionId: ID!) {
  commitImportSession(importSessionId: $importSessionId) {
    id
    name
    description
    created
    organizationId
    userId
    processType
    files {
      id
      clientId
      name
      type
      size
      uploadStatus
      numParts
    }
  }
}
"""

IMPORT_SESSION: Final = """\
query importSession($importSessionId: ID!) {
  importSession(importSessionId: $importSessionId) {
    id
    name
    description
    created
    organizationId
    userId
    modelId
    processType
    files {
      id
      clientId
      name
      type
      size
      uploadStatus
      numParts
      parts {
        minSize
        maxSize
        headers {
          key
          value
        }
      }
    }
  }
}
"""

LIST_IMPORT_SESSIONS: Final = """\
query listImportSessions($modelId: ID) {
  listImportSessions(modelId: $modelId) {
    results {
      id
      name
      created
      modified
      organizationId
      userId
      processType
      committed
    }
  }
}
"""

IMPORT_FILE_PARTS_UPLOAD_STATUS: Final = """\
query importFilePartsUploadStatus(
  $importSessionId: ID!
  $importFileId: ID!
) {
  importFilePartsUploadStatus(
    importSessionId: $importSessionId
    importFileId: $importFileId
  ) {
    eTag
    size
    partNumber
  }
}
"""

# ---- credentials and errors --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatterportCredentials:
    """An API token: its id is the Basic-auth user name, its secret the password."""

    token_id: str
    token_secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.token_id or not self.token_secret:
            raise AuthenticationError(
                "Matterport credentials are empty: set MATTERPORT_TOKEN_ID and "
                "MATTERPORT_TOKEN_SECRET"
            )
        if ":" in self.token_id:
            raise AuthenticationError("the Matterport token id must not contain ':'")
        if any(c in value for value in (self.token_id, self.token_secret) for c in "\r\n\0"):
            raise AuthenticationError("Matterport credentials must not contain line breaks")

    def __repr__(self) -> str:
        return f"MatterportCredentials(token_id={self.token_id!r}, token_secret='[redacted]')"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MatterportCredentials:
        """Read ``MATTERPORT_TOKEN_ID`` and ``MATTERPORT_TOKEN_SECRET`` (``os.environ`` by
        default); raise ``AuthenticationError`` when either is missing."""
        env = os.environ if environ is None else environ
        token_id = env.get("MATTERPORT_TOKEN_ID", "").strip()
        token_secret = env.get("MATTERPORT_TOKEN_SECRET", "").strip()
        missing = [
            name
            for name, value in (
                ("MATTERPORT_TOKEN_ID", token_id),
                ("MATTERPORT_TOKEN_SECRET", token_secret),
            )
            if not value
        ]
        if missing:
            raise AuthenticationError(
                f"no Matterport credentials ({' and '.join(missing)} unset): "
                "set MATTERPORT_TOKEN_ID and MATTERPORT_TOKEN_SECRET"
            )
        return cls(token_id, token_secret)

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value (sent preemptively with every request)."""
        pair = f"{self.token_id}:{self.token_secret}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


#: extensions.code -> the error raised at once (``error.internal`` is absent: it is retried)
_CODE_ERRORS: Final[Mapping[str, type[RemoteError]]] = {
    "request.unauthenticated": AuthenticationError,
    "request.unauthorized": PermissionDeniedError,
    "request.invalid": InvalidRequestError,
    "not.found": NotFoundError,
    "not.unique": ConflictError,
    "quota.exceeded": QuotaExceededError,
}
TRANSIENT_CODES: Final = frozenset({"error.internal"})


def _one_line(text: str) -> str:
    return " ".join(text.split())


def classify(failure: GraphQLFailure) -> RemoteError | None:
    """The error for a failed Matterport call, or ``None`` to retry it (``error.internal``).

    HTTP 429/5xx never reach here (``GraphQLClient`` retries them)."""
    op, code = failure.operation, failure.code
    if code in TRANSIENT_CODES:
        return None
    message = _one_line(failure.message) or f"HTTP {failure.status}"
    if code == "request.unauthenticated" or (not code and failure.status in (401, 403)):
        return AuthenticationError(
            f"{op}: Matterport refused the credentials: check MATTERPORT_TOKEN_ID/SECRET "
            f"({message})",
            code=code,
        )
    if code == "request.unauthorized":
        return PermissionDeniedError(
            f"{op}: not allowed with this token: {message} ({code})", code=code
        )
    if code == "quota.exceeded":
        return QuotaExceededError(
            f"{op}: the account's quota is exceeded: {message} ({code})", code=code
        )
    kind = _CODE_ERRORS.get(code, InvalidRequestError)
    return kind(f"{op}: {message}" + (f" ({code})" if code else ""), code=code)


# ---- records -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatterportResult:
    """One import: the session, the model it became, and each file's upload.

    ``seconds`` is the wall time of the whole import (checks, uploads, waiting for the model);
    ``bytes`` the total size of the files; ``operations`` the GraphQL operations sent, in order.
    """

    session_id: str
    model_id: str
    files: tuple[UploadResult, ...]
    seconds: float
    bytes: int
    operations: tuple[str, ...] = ()

    @property
    def throughput(self) -> float:
        """Bytes per second of the whole import (0 for an instant one)."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class MatterportFile:
    """One file of an import session, as the server knows it (``status``: PENDING, STARTED,
    COMPLETED). ``client_id`` is the ``importFileId`` every file-level call sends."""

    info: FileInfo
    client_id: str
    e57_id: str = ""
    file_id: str = ""
    status: str = PENDING


def _obj(value: object, op: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ServiceError(f"{op}: malformed answer from Matterport (expected an object)")
    return value


def _int(value: object, op: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ServiceError(f"{op}: malformed answer from Matterport ({name} is not a number)")
    try:
        return int(value)
    except ValueError:
        raise ServiceError(
            f"{op}: malformed answer from Matterport ({name} is not a number)"
        ) from None


def _files_of(session: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The session's files by clientId."""
    out: dict[str, dict[str, Any]] = {}
    for item in session.get("files") or ():
        if isinstance(item, dict) and isinstance(item.get("clientId"), str):
            out[item["clientId"]] = item
    return out


def _file_key(session_id: str, info: FileInfo) -> str:
    """A file's journal key: per session, so a new session never sees an old one's parts."""
    return f"matterport:{session_id}:{info.key}"


async def _fetch_session(client: GraphQLClient, session_id: str) -> dict[str, Any]:
    data = await client.execute(IMPORT_SESSION, {"importSessionId": session_id})
    session = data.get("importSession")
    if session is None:
        raise NotFoundError(f"importSession: import session {session_id} not found")
    return _obj(session, "importSession")


# ---- one file ----------------------------------------------------------------------------------


class MatterportFileTarget(Target):
    """One E57 file of an import session, driven by the engine (see the module docstring)."""

    kind = "matterport"

    def __init__(self, client: GraphQLClient, session_id: str, file: MatterportFile) -> None:
        self._client = client
        self.session_id = session_id
        self.file = file
        self._resumed = file.status == STARTED  # the server may hold parts already
        self._first: tuple[int, int, PartRequest] | None = None  # prepare's answer, kept once

    def __repr__(self) -> str:
        f = self.file
        return f"<MatterportFileTarget session={self.session_id} {f.client_id} {f.status}>"

    def journal_key(self, file: FileInfo) -> str:
        return _file_key(self.session_id, file)

    def _ids(self) -> dict[str, Any]:
        return {"importSessionId": self.session_id, "importFileId": self.file.client_id}

    def _remote(self) -> dict[str, str]:
        f = self.file
        return {"session_id": self.session_id, "client_id": f.client_id, "file_id": f.file_id}

    async def _server_status(self) -> str:
        session = await _fetch_session(self._client, self.session_id)
        found = _files_of(session).get(self.file.client_id) or {}
        return str(found.get("uploadStatus") or "")

    async def _request_part(self, index: int, size: int) -> tuple[dict[str, Any], PartRequest]:
        op = "requestPartUpload"
        data = await self._client.execute(
            REQUEST_PART_UPLOAD, {**self._ids(), "part": index, "size": size}
        )
        answer = _obj(data.get(op), op)
        url = answer.get("url")
        if not isinstance(url, str) or not url:
            raise ServiceError(f"{op}: malformed answer from Matterport (no url for part {index})")
        headers = tuple(
            (str(h.get("key", "")), str(h.get("value", "")))
            for h in answer.get("headers") or ()
            if isinstance(h, dict) and h.get("key")
        )
        method = str(answer.get("method") or "PUT").upper()
        return answer, PartRequest(url=url, method=method, headers=headers)

    async def prepare(self, ctx: TargetContext) -> PartLimits:
        f, size = self.file, ctx.file.size
        if f.status == PENDING:
            try:
                await self._client.execute(BEGIN_UPLOAD, self._ids())
            except (InvalidRequestError, ConflictError):
                status = await self._server_status()  # a retry after a lost answer?
                if status not in (STARTED, COMPLETED):
                    raise
                f.status = status
            else:
                f.status = STARTED
            ctx.phase("upload begun")
        if f.status == COMPLETED:
            return _journaled_limits(ctx.journal)
        op = "requestPartUpload"
        probe, tries = size, 0
        while True:
            try:
                answer, request = await self._request_part(0, probe)
                break
            except InvalidRequestError:
                # A file above maxSize cannot be asked for whole: ask for a smaller first
                # part (the preferred size, then halves), a few times, to learn the limits.
                probe, tries = min(ctx.config.part_size, probe // 2), tries + 1
                if probe < 1 or tries > _PROBES:
                    raise
        min_size = _int(answer.get("minSize"), op, "minSize")
        max_size = _int(answer.get("maxSize"), op, "maxSize")
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ServiceError(
                f"{op}: unusable part limits from Matterport: {min_size}..{max_size}"
            )
        ctx.journal.set_remote(min_size=str(min_size), max_size=str(max_size))
        self._first = (0, probe, request)
        return PartLimits(min_size=min_size, max_size=max_size, single=min_size == max_size == size)

    async def stored_parts(
        self, plan: Sequence[PartSpec], ctx: TargetContext
    ) -> dict[int, PartResult]:
        journal = ctx.journal.state.parts
        if self.file.status == COMPLETED:  # nothing to send; ETags are for the record only
            return {
                p.number: journal.get(p.number) or PartResult(p.number, "", p.size) for p in plan
            }
        if not self._resumed:
            return {}
        op = "importFilePartsUploadStatus"
        data = await self._client.execute(IMPORT_FILE_PARTS_UPLOAD_STATUS, self._ids())
        held: dict[int, tuple[str, int]] = {}
        for item in data.get(op) or ():
            if isinstance(item, dict) and item.get("eTag"):
                number = _int(item.get("partNumber"), op, "partNumber") + 1  # zero-based
                held[number] = (str(item["eTag"]), _int(item.get("size"), op, "size"))
        out: dict[int, PartResult] = {}
        for p in plan:
            etag, size = held.get(p.number, ("", -1))
            if size != p.size:
                continue  # not on the server (whatever the journal says), or another plan's
            mine = journal.get(p.number)
            if mine is not None and mine.etag.strip('"') == etag.strip('"'):
                etag = mine.etag  # as the storage returned it
            out[p.number] = PartResult(p.number, etag, p.size)
        return out

    async def part_request(
        self, part: PartSpec, ctx: TargetContext, *, refresh: bool
    ) -> PartRequest:
        index = part.number - 1
        first, self._first = self._first, None
        if first is not None and not refresh and first[:2] == (index, part.size):
            return first[2]
        _, request = await self._request_part(index, part.size)
        return request

    async def complete(self, parts: Sequence[PartResult], ctx: TargetContext) -> Mapping[str, str]:
        f = self.file
        if f.status != COMPLETED:
            completed = [{"headers": [{"key": "ETag", "value": p.etag}]} for p in parts]
            try:
                await self._client.execute(
                    COMPLETE_UPLOAD, {**self._ids(), "completedParts": completed}
                )
            except (InvalidRequestError, ConflictError):
                if await self._server_status() != COMPLETED:  # a retry after a lost answer?
                    raise
            f.status = COMPLETED
            ctx.phase("upload completed")
        return self._remote()


def _journaled_limits(journal: FileJournal) -> PartLimits:
    remote = journal.state.remote
    try:
        return PartLimits(min_size=int(remote["min_size"]), max_size=int(remote["max_size"]))
    except (KeyError, ValueError):
        return PartLimits(single=True)


# ---- the session -------------------------------------------------------------------------------


def _check_files(paths: Sequence[str | os.PathLike[str]]) -> list[FileInfo]:
    if isinstance(paths, str | os.PathLike):
        raise ConfigError("paths must be a sequence of paths, not one path")
    infos = [FileInfo.of(p) for p in paths]
    if not infos:
        raise ConfigError("no files to import")
    seen: set[str] = set()
    for info in infos:
        if info.key in seen:
            raise ConfigError(f"{info.path}: listed twice")
        seen.add(info.key)
    for info in infos:
        check_e57(info.path)
    return infos


def _fingerprints(infos: Sequence[FileInfo]) -> str:
    table = {i.key: [i.size, i.mtime_ns] for i in sorted(infos, key=lambda i: i.key)}
    return orjson.dumps(table).decode()


class Matterport:
    """The Matterport Import API (seed ``000``) for one set of credentials.

    endpoint:        the Import API's GraphQL endpoint.
    poll_interval:   seconds between the first ``importSession`` polls for the model; the
                     interval grows by half each time up to eight times this.
    model_deadline:  seconds to wait for the model after commit before giving up.
    sleep:           injected wait for polling (tests pass a fast one).
    """

    def __init__(
        self,
        credentials: MatterportCredentials,
        *,
        endpoint: str = ENDPOINT,
        poll_interval: float = 2.0,
        model_deadline: float = 3600.0,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if not poll_interval > 0 or not model_deadline > 0:
            raise ConfigError("poll_interval and model_deadline must be positive seconds")
        self.credentials = credentials
        self.endpoint = endpoint
        self.poll_interval = poll_interval
        self.model_deadline = model_deadline
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"<Matterport {self.endpoint} token_id={self.credentials.token_id!r}>"

    def graphql(self, engine: Engine) -> GraphQLClient:
        """A GraphQL client on the engine's control pool, retrying like the engine does."""
        cfg = engine.config
        return GraphQLClient(
            engine.control,
            self.endpoint,
            headers={"Authorization": self.credentials.authorization},
            classify=classify,
            max_attempts=cfg.max_attempts,
            backoff_base=cfg.backoff_base,
            backoff_cap=cfg.backoff_cap,
            sleep=engine.sleep,
            rng=engine.rng,
        )

    async def import_files(
        self,
        uploader: Uploader,
        paths: Sequence[str | os.PathLike[str]],
        *,
        organization: str,
        name: str | None = None,
        description: str | None = None,
    ) -> MatterportResult:
        """Import ``paths`` (E57 files) into one model of ``organization``; see the module
        docstring for the flow. Raises one ``UploadError`` (the first failed file's)."""
        started = time.monotonic()
        if not organization or not organization.strip():
            raise ConfigError("organization must be a Matterport organization id")
        engine = uploader.engine
        infos = _check_files(paths)
        client = self.graphql(engine)
        run = _Import(engine, client, organization, infos)
        await run.open_session(name, description)
        await run.add_files()
        uploads = await run.upload()
        await run.commit()
        model_id = await run.wait_model(self.poll_interval, self.model_deadline, self._sleep)
        return MatterportResult(
            session_id=run.session_id,
            model_id=model_id,
            files=tuple(uploads),
            seconds=time.monotonic() - started,
            bytes=sum(i.size for i in infos),
            operations=tuple(client.calls),
        )


class _Import:
    """The state of one ``import_files`` call (one session)."""

    def __init__(
        self, engine: Engine, client: GraphQLClient, organization: str, infos: list[FileInfo]
    ) -> None:
        self.engine = engine
        self.client = client
        self.organization = organization
        self.infos = infos
        self.files: list[MatterportFile] = []
        self.session_id = ""
        self.model_id = ""
        self.server_files: dict[str, dict[str, Any]] = {}
        paths = "|".join(sorted(i.key for i in infos))
        self.journal = engine.journal.for_key(f"{SESSION_KEY_PREFIX}{organization}:{paths}")

    def __repr__(self) -> str:
        return f"<_Import session={self.session_id or '-'} files={len(self.infos)}>"

    def emit_all(self, message: str) -> None:
        for info in self.infos:
            self.engine.emit(Phase(info.path, message))

    async def open_session(self, name: str | None, description: str | None) -> None:
        remote = self.journal.state.remote
        fingerprints = _fingerprints(self.infos)
        known = remote.get("session_id", "")
        if known and remote.get("fingerprints") != fingerprints:
            if self.engine.on_change == "refuse":
                raise SourceChangedError(
                    f"{_changed(remote.get('fingerprints', ''), self.infos)} changed since "
                    f"import session {known} started; rerun with --on-change restart to "
                    "import the new contents in a new session"
                )
            known = ""
        if known:
            try:
                session = await _fetch_session(self.client, known)
            except NotFoundError:
                pass  # gone (expired or deleted): start again
            else:
                self.session_id = known
                self.server_files = _files_of(session)
                self.model_id = str(session.get("modelId") or "")
                self.emit_all(f"resuming import session {known}")
                return
        variables: dict[str, Any] = {"organizationId": self.organization, "processType": "E57"}
        if name is not None:
            variables["name"] = name
        if description is not None:
            variables["description"] = description
        data = await self.client.execute(ADD_IMPORT_SESSION, variables)
        session_id = str(_obj(data.get("addImportSession"), "addImportSession").get("id") or "")
        if not session_id:
            raise ServiceError("addImportSession: malformed answer from Matterport (no id)")
        self.session_id = session_id
        self.journal.set_remote(fresh=True, session_id=session_id, fingerprints=fingerprints)
        self.emit_all(f"import session {session_id} created")

    async def add_files(self) -> None:
        journals = []
        claimed: set[str] = set()
        for info in self.infos:
            fj = self.engine.journal.for_key(_file_key(self.session_id, info))
            fj.begin(info, on_change=self.engine.on_change)
            journals.append(fj)
            client_id = fj.state.remote.get("client_id", "")
            if client_id in self.server_files:
                claimed.add(client_id)
        taken = set(self.server_files)
        for position, (info, fj) in enumerate(zip(self.infos, journals, strict=True), 1):
            client_id = fj.state.remote.get("client_id", "")
            on_server = self.server_files.get(client_id) if client_id else None
            guess = self.server_files.get(f"file{position}")
            if (
                on_server is None
                and guess is not None
                and f"file{position}" not in claimed
                and _same_file(guess, info)
            ):  # added by a run that died before it could journal it
                client_id, on_server = f"file{position}", guess
            if on_server is not None:
                file = MatterportFile(
                    info,
                    client_id,
                    e57_id=fj.state.remote.get("e57_id", ""),
                    file_id=str(on_server.get("id") or ""),
                    status=str(on_server.get("uploadStatus") or PENDING),
                )
                fj.set_remote(session_id=self.session_id, client_id=client_id, file_id=file.file_id)
            else:
                number = position
                while f"file{number}" in taken:
                    number += 1
                file = await self._add(info, f"file{number}", f"e57-{number}")
                fj.set_remote(
                    session_id=self.session_id,
                    client_id=file.client_id,
                    e57_id=file.e57_id,
                    file_id=file.file_id,
                )
                self.engine.emit(Phase(info.path, f"added to import session as {file.client_id}"))
            taken.add(file.client_id)
            claimed.add(file.client_id)
            self.files.append(file)

    async def _add(self, info: FileInfo, client_id: str, e57_id: str) -> MatterportFile:
        op = "addE57Object"
        e57 = {
            "id": e57_id,
            "file": {
                "clientId": client_id,
                "name": info.path.name,
                "type": FILE_TYPE,
                "size": info.size,
            },
        }
        try:
            data = await self.client.execute(
                ADD_E57_OBJECT, {"importSessionId": self.session_id, "e57": e57}
            )
        except (InvalidRequestError, ConflictError):
            # A retry after a lost answer finds the file already added: adopt it.
            session = await _fetch_session(self.client, self.session_id)
            found = _files_of(session).get(client_id)
            if found is None or not _same_file(found, info):
                raise
            return MatterportFile(
                info,
                client_id,
                file_id=str(found.get("id") or ""),
                status=str(found.get("uploadStatus") or PENDING),
            )
        added = _obj(data.get(op), op)
        found = _files_of(added).get(client_id) or {}
        return MatterportFile(
            info,
            client_id,
            e57_id=str(added.get("id") or ""),
            file_id=str(found.get("id") or ""),
            status=str(found.get("uploadStatus") or PENDING),
        )

    async def upload(self) -> list[UploadResult]:
        results: list[UploadResult | None] = [None] * len(self.files)
        errors: list[tuple[int, UploadError]] = []

        async def one(i: int, file: MatterportFile) -> None:
            target = MatterportFileTarget(self.client, self.session_id, file)
            try:
                results[i] = await self.engine.upload_file(file.info, target)
            except UploadError as exc:
                errors.append((i, exc))

        async with anyio.create_task_group() as tg:
            for i, file in enumerate(self.files):
                tg.start_soon(one, i, file)
        if errors:
            errors.sort(key=lambda e: e[0])
            first = errors[0][1]
            if len(errors) > 1:
                first.add_note(f"{len(errors) - 1} more file(s) of the import failed too")
            raise first
        return [r for r in results if r is not None]

    async def _committed(self) -> bool:
        """Whether the server already took ``commitImportSession`` for this session."""
        session = await _fetch_session(self.client, self.session_id)
        if session.get("modelId"):
            return True
        data = await self.client.execute(LIST_IMPORT_SESSIONS, {"modelId": None})
        listed = _obj(data.get("listImportSessions"), "listImportSessions").get("results") or ()
        return any(
            isinstance(s, dict) and s.get("id") == self.session_id and s.get("committed") is True
            for s in listed
        )

    async def commit(self) -> None:
        marks = self.journal.state.marks
        if self.model_id or "committed" in marks:
            return
        if self.engine.draining:
            raise InterruptedUpload(
                f"import session {self.session_id}: stopped before commit; rerun to finish it"
            )
        if "commit" not in marks or not await self._committed():
            self.journal.mark("commit")  # before the call: a rerun then checks, never repeats
            try:
                await self.client.execute(
                    COMMIT_IMPORT_SESSION, {"importSessionId": self.session_id}
                )
            except (InvalidRequestError, ConflictError):
                if not await self._committed():  # a retry after a lost answer?
                    raise
        self.journal.mark("committed")
        self.emit_all(f"import session {self.session_id} committed")

    async def wait_model(
        self, interval: float, deadline: float, sleep: Callable[[float], Awaitable[None]]
    ) -> str:
        if not self.model_id:
            self.emit_all("waiting for the model")
            give_up = time.monotonic() + deadline
            step = interval
            while True:
                session = await _fetch_session(self.client, self.session_id)
                self.model_id = str(session.get("modelId") or "")
                if self.model_id:
                    break
                if self.engine.draining:
                    raise InterruptedUpload(
                        f"import session {self.session_id}: stopped while waiting for the "
                        "model; rerun to pick it up"
                    )
                left = give_up - time.monotonic()
                if left <= 0:
                    raise ProcessingError(
                        f"importSession: no model for import session {self.session_id} after "
                        f"{deadline:g} s; it may still be processing: rerun later to pick it up"
                    )
                await sleep(min(step, left))
                step = min(step * 1.5, interval * 8)
            self.journal.set_remote(model_id=self.model_id)
        self.emit_all(f"model {self.model_id} ready")
        return self.model_id


def _same_file(item: Mapping[str, Any], info: FileInfo) -> bool:
    return item.get("name") == info.path.name and str(item.get("size")) == str(info.size)


def _changed(journaled: str, infos: Sequence[FileInfo]) -> str:
    try:
        before = orjson.loads(journaled) if journaled else {}
    except orjson.JSONDecodeError:
        before = {}
    now = orjson.loads(_fingerprints(infos))
    changed = [key for key in now if before.get(key) != now[key]]
    return ", ".join(changed) or "the file list"
