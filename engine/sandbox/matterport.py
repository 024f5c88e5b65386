"""The Matterport Import API control plane of the sandbox: ``POST /api/import/graph``.

Documents are executed with graphql-core against ``matterport.graphql`` (written from Matterport's
Import API guide), so a wrong field, argument or variable type is refused as the real server would.
Bytes go to the sandbox :class:`~engine.sandbox.blobstore.BlobStore` through presigned URLs; this
module never touches them except to check the assembled files at commit.

Rules this module keeps:

* **HTTP.** Every answer is JSON ``{"data": …, "errors": [{message, locations?, path?,
  extensions: {code}}]}``. GraphQL problems (syntax, unknown field, wrong type, missing variable)
  and every resolver error are HTTP 200. A missing or wrong ``Authorization: Basic
  base64(id:secret)`` is HTTP 401 with ``WWW-Authenticate: Basic`` and the same JSON shape, code
  ``request.unauthenticated``, before the document is looked at; a body that is not a JSON object
  with a string ``query`` is HTTP 400, code ``request.invalid``. Clients should map by
  ``extensions.code``, not by status.
* **Error codes** (``extensions.code``): ``request.invalid`` (GraphQL validation, bad arguments,
  state-machine violations, a refused completion), ``request.unauthorized`` (an organizationId
  not granted to the token), ``not.found`` (unknown session, or no file with that clientId in
  it), ``not.unique`` (a clientId or E57 object id added twice to one session),
  ``quota.exceeded`` (see ``quota``), ``error.internal`` (injected faults; unexpected bugs).
* **Identifiers.** ``importFileId`` arguments take the file's *clientId*, as the guide says.
  ``part`` and every ``partNumber`` this API returns are **zero-based**: part *i* is stored as
  S3 part *i + 1*. Sizes are bytes, as ``Long`` (64-bit), so files above 2 GiB work.
* **State machine per file:** PENDING (addE57Object) → STARTED (beginUpload, which creates the
  multipart upload) → COMPLETED (completeUpload, which completes it). requestPartUpload needs
  STARTED; commitImportSession needs every file COMPLETED and at least one file; nothing may be
  added or uploaded once the session is committed. With ``idempotent_retries`` (the default) a
  repeated beginUpload on a STARTED file, a repeated completeUpload on a COMPLETED file with the
  same ETags, and a repeated commitImportSession return the current record instead of an error,
  so a client may retry any of them after a lost answer; with it off they are ``request.invalid``.
  addE57Object is never idempotent (``not.unique``).
* **Part limits** come from the configuration: every part but the last at least ``minSize``,
  no part above ``maxSize``, at most ``max_parts`` parts. In ``single_part`` mode the file is one
  part: ``minSize == maxSize == file size`` and only ``part: 0`` with ``size`` = file size.
  requestPartUpload checks ``size`` against ``maxSize`` and the file size; the URL does not bind
  the size (S3 part URLs don't): completeUpload checks what was actually stored. ``completed``
  says whether the blob store already holds that part (a part never requested cannot be
  stored, since only this plane issues URLs for its keys). ``headers`` lists ``part_headers``,
  which are also signed into the URL. importSession's ``parts``/``numParts`` show the part
  uploads requested while STARTED and null otherwise (the guide's sample shows null for a
  COMPLETED file). importFilePartsUploadStatus lists stored parts: the blob store's while
  STARTED, the completed ones after; ``eTag`` quoted, as S3 lists them.
* **Sessions.** listImportSessions is newest first; with ``modelId`` only that model's session.
  Session ids are 24 lowercase alphanumerics, file and object ids 25, model and user ids 11
  alphanumerics (user id derived from the token id), all reproducible from ``seed``.
* **completeUpload** takes the ETags positionally (entry *k* is part *k*), quotes optional. Every
  listed part must be stored with that ETag, every part but the last at least ``minSize``, none
  above ``maxSize``, and the sizes must add up to the declared file size; the first violation is
  a ``request.invalid`` naming the part. Then the blob store assembles the object.
* **Commit and the model.** commitImportSession answers at once, with ``files: []`` as in the
  guide's sample. A worker thread then checks each assembled file as E57 (header, XML section,
  every page CRC) and records its MD5; ``modelId`` appears ``model_delay`` seconds after the
  commit, or once the check is done if that is later. A file that fails the check means no
  model, ever: ``modelId`` stays null (the Import API has no field for the reason; clients must
  poll with a deadline) and the reason is kept in :attr:`ImportSessionRecord.failure` for tests.
  In discard mode nothing is on disk: the check is skipped and the MD5 is the store's.
* **Quota** (``quota``): the number of models an organization may have. addImportSession is
  refused once that many sessions produced (or are producing) a model, and so is a commit that
  would go over it.
* **Faults** (seeded, deterministic in call order): each root field call fails with
  ``error.internal`` with probability ``internal_error_rate``, and each name in
  ``fail_operations`` fails its next call (list a name twice to fail twice). By default a fault
  strikes before the operation does anything; with ``fail_after_effect`` it strikes after, so
  the effect happened and only the answer is lost.
* **State** lives in memory on the event loop thread; the E57 check runs in one worker thread on
  immutable inputs and hands back one immutable result. Reads apply it lazily.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import logging
import random
import string
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import anyio.to_thread
import graphql
import orjson
from aiohttp import web
from graphql import GraphQLError, GraphQLScalarType, IntValueNode, ValueNode

from engine.sandbox.blobstore import BlobError, BlobStore, StoredObject, StoredPart
from engine.sandbox.e57 import E57Error, validate_e57

__all__ = [
    "ENDPOINT",
    "OPERATIONS",
    "SDL_PATH",
    "ApiError",
    "ImportFileRecord",
    "ImportSessionRecord",
    "MatterportPlane",
    "MatterportSandboxConfig",
    "check_completion",
    "normalize_etag",
]

ENDPOINT: Final = "/api/import/graph"
SDL_PATH: Final = Path(__file__).with_name("matterport.graphql")

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB
LONG_MIN: Final = -(2**63)
LONG_MAX: Final = 2**63 - 1

INVALID: Final = "request.invalid"
UNAUTHENTICATED: Final = "request.unauthenticated"
UNAUTHORIZED: Final = "request.unauthorized"
INTERNAL: Final = "error.internal"
NOT_FOUND: Final = "not.found"
NOT_UNIQUE: Final = "not.unique"
QUOTA_EXCEEDED: Final = "quota.exceeded"

UploadStatus = Literal["PENDING", "STARTED", "COMPLETED"]

_ALNUM_LOWER: Final = string.ascii_lowercase + string.digits
_ALNUM: Final = string.ascii_letters + string.digits
_WAIT_POLL: Final = 0.01  # seconds between checks in wait_processed

OPERATIONS: Final = (
    "importSession",
    "listImportSessions",
    "importFilePartsUploadStatus",
    "addImportSession",
    "addE57Object",
    "beginUpload",
    "requestPartUpload",
    "completeUpload",
    "commitImportSession",
)
"""The root fields of the API, by the names ``calls`` and ``fail_operations`` use."""

_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class MatterportSandboxConfig:
    """How the sandbox's Import API behaves. Sizes in bytes, times in seconds.

    ``credentials``: accepted (token id, token secret) pairs for HTTP Basic auth.
    ``organizations``: organizationIds the tokens may import into.
    ``min_part_size`` / ``max_part_size`` / ``max_parts``: the part rules announced as
    ``minSize``/``maxSize`` and enforced at completeUpload (defaults: S3's). Keep the blob
    store's own minimum at or below ``min_part_size``.
    ``single_part``: upload each file as one part (``minSize == maxSize == file size``; files
    above ``max_part_size`` cannot be uploaded).
    ``part_headers``: extra (name, value) headers every part PUT must carry; returned in
    ``headers`` and signed into the URL, so the blob store refuses a PUT without them.
    ``url_expiry``: lifetime of each presigned URL.
    ``model_delay``: time from commit to ``modelId`` (at least the E57 check's duration).
    ``quota``: models per organization, None for no limit.
    ``idempotent_retries``: see the module docstring (state machine).
    ``internal_error_rate``, ``fail_operations``, ``fail_after_effect``, ``seed``: injected
    ``error.internal`` faults; ``seed`` also makes the generated ids reproducible.
    """

    credentials: tuple[tuple[str, str], ...] = (("sandbox-token-id", "sandbox-token-secret"),)
    organizations: frozenset[str] = frozenset({"sandbox-org"})
    min_part_size: int = 5 * MiB
    max_part_size: int = 5 * GiB
    max_parts: int = 10_000
    single_part: bool = False
    part_headers: tuple[tuple[str, str], ...] = ()
    url_expiry: float = 3600.0
    model_delay: float = 0.2
    quota: int | None = None
    idempotent_retries: bool = True
    internal_error_rate: float = 0.0
    fail_operations: tuple[str, ...] = ()
    fail_after_effect: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        # Accept any iterables, keep hashable values.
        object.__setattr__(self, "credentials", tuple(map(tuple, self.credentials)))
        object.__setattr__(self, "organizations", frozenset(self.organizations))
        object.__setattr__(self, "part_headers", tuple(map(tuple, self.part_headers)))
        object.__setattr__(self, "fail_operations", tuple(self.fail_operations))
        unknown = set(self.fail_operations) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"fail_operations names unknown operations: {sorted(unknown)}")
        if not self.credentials or any(not i or not s for i, s in self.credentials):
            raise ValueError("credentials needs at least one (token id, secret) pair, non-empty")
        if any(":" in token_id for token_id, _ in self.credentials):
            raise ValueError("a token id cannot contain ':' (HTTP Basic splits on it)")
        if not self.organizations:
            raise ValueError("organizations must not be empty")
        if not 0 <= self.min_part_size <= self.max_part_size or self.max_part_size < 1:
            raise ValueError("need 0 <= min_part_size <= max_part_size and max_part_size >= 1")
        if not 1 <= self.max_parts <= 10_000:
            raise ValueError("max_parts must be in 1..10000 (S3's limit)")
        if self.url_expiry <= 0 or self.model_delay < 0:
            raise ValueError("url_expiry must be > 0 and model_delay >= 0")
        if self.quota is not None and self.quota < 0:
            raise ValueError("quota must be >= 0 or None")
        if not 0.0 <= self.internal_error_rate <= 1.0:
            raise ValueError("internal_error_rate must be in [0, 1]")
        for name, _ in self.part_headers:
            if not name or name.strip().lower() in ("content-length", "host", "authorization"):
                raise ValueError(f"part header {name!r} cannot be required")


class ApiError(Exception):
    """A GraphQL error with ``extensions.code`` (one of the codes in the module docstring)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------------------------------
# Records: the plane's state, mutated only on the event loop.


@dataclass(eq=False)
class ImportFileRecord:
    """One file of a session. ``md5`` is the assembled object's, set when the commit check ran."""

    id: str
    client_id: str
    object_id: str
    name: str
    type: str
    size: int
    key: str
    status: UploadStatus = "PENDING"
    upload_id: str | None = None
    requested: dict[int, dict[str, Any]] = field(default_factory=dict)
    parts: tuple[StoredPart, ...] = ()
    stored: StoredObject | None = None
    completing: bool = False
    md5: str | None = None

    def __repr__(self) -> str:
        return f"ImportFileRecord({self.client_id!r}, {self.status}, {self.size} bytes)"


@dataclass(eq=False)
class E57ObjectRecord:
    id: str
    client_id: str
    files: list[ImportFileRecord]


@dataclass(eq=False)
class ImportSessionRecord:
    """One import session. ``failure`` says why no model was made (None while all is well)."""

    id: str
    organization_id: str
    user_id: str
    process_type: str
    name: str | None
    description: str | None
    created: datetime
    modified: datetime
    objects: list[E57ObjectRecord] = field(default_factory=list)
    files: dict[str, ImportFileRecord] = field(default_factory=dict)
    committed: bool = False
    committed_at: float | None = None
    model_id: str | None = None
    failure: str | None = None
    check: Future[_Outcome] | None = None

    def __repr__(self) -> str:
        state = self.model_id or self.failure or ("committed" if self.committed else "open")
        return f"ImportSessionRecord({self.id!r}, files={len(self.files)}, {state})"

    @property
    def counts_against_quota(self) -> bool:
        return self.committed and self.failure is None


@dataclass(frozen=True)
class _Caller:
    token_id: str
    user_id: str


@dataclass(frozen=True)
class _FileCheck:
    client_id: str
    name: str
    path: Path | None  # None: nothing on disk (discard mode), skip the E57 check
    stored_md5: str


@dataclass(frozen=True)
class _Outcome:
    md5: Mapping[str, str]
    failure: str | None


class _Stopped(Exception):
    """The plane is closing: abandon the E57 check."""


# --------------------------------------------------------------------------------------------------
# Pure decisions.


def normalize_etag(etag: str) -> str:
    """An ETag without surrounding whitespace, quotes or a weak prefix, lower-cased."""
    value = etag.strip()
    value = value.removeprefix("W/")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value.strip().lower()


def check_completion(
    etags: Sequence[str],
    stored: Mapping[int, StoredPart],
    *,
    file_size: int,
    min_size: int,
    max_size: int,
) -> list[tuple[int, str]]:
    """Decide a completeUpload: ETag *k* is for zero-based part *k* (S3 part *k + 1*).

    ``stored`` maps S3 part numbers to what the blob store holds. Returns the ``(S3 part number,
    stored ETag)`` list to complete with, or raises ApiError(request.invalid) for the first fault.
    """
    if not etags:
        raise ApiError(INVALID, "completedParts is empty: list one entry per uploaded part")
    by_etag = {normalize_etag(p.etag): number - 1 for number, p in stored.items()}
    parts: list[StoredPart] = []
    for index, etag in enumerate(etags):  # first: is each listed part there, with that ETag?
        part = stored.get(index + 1)
        if part is None:
            raise ApiError(
                INVALID,
                f"completedParts[{index}]: part {index} was never uploaded"
                " (completedParts lists parts in order, one entry per part, starting at part 0)",
            )
        if normalize_etag(etag) != normalize_etag(part.etag):
            other = by_etag.get(normalize_etag(etag))
            hint = (
                f"; it is the ETag of part {other}: list completedParts in part order"
                if other is not None
                else ""
            )
            raise ApiError(
                INVALID,
                f"completedParts[{index}]: ETag {etag!r} does not match the ETag of the stored"
                f" part {index}{hint}",
            )
        parts.append(part)
    last = len(parts) - 1
    for index, part in enumerate(parts):  # then: do the sizes obey the part rules?
        if part.size > max_size:
            raise ApiError(INVALID, f"part {index} is {part.size} bytes, above maxSize {max_size}")
        if index < last and part.size < min_size:
            raise ApiError(
                INVALID,
                f"part {index} is {part.size} bytes, below minSize {min_size}; only the last"
                " part may be smaller",
            )
    total = sum(part.size for part in parts)
    if total != file_size:
        raise ApiError(
            INVALID,
            f"parts 0..{last} hold {total} bytes but the file was declared as {file_size} bytes",
        )
    listed = [(part.number, part.etag) for part in parts]
    return listed


def _parse_basic(header: str | None) -> tuple[str, str] | None:
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    token_id, colon, secret = decoded.partition(":")
    return (token_id, secret) if colon else None


def _user_id(token_id: str) -> str:
    digest = hashlib.sha256(b"matterport-user:" + token_id.encode()).digest()
    return "".join(_ALNUM[b % len(_ALNUM)] for b in digest[:11])


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --------------------------------------------------------------------------------------------------
# Scalars.


def _coerce_long(value: Any) -> int:
    if isinstance(value, bool):
        raise GraphQLError(f"Long cannot represent a boolean: {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise GraphQLError(f"Long cannot represent a non-integer value: {value!r}")
    if not LONG_MIN <= value <= LONG_MAX:
        raise GraphQLError(f"Long cannot represent {value}: outside the signed 64-bit range")
    return value


def _parse_long_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> int:
    if not isinstance(node, IntValueNode):
        raise GraphQLError(f"Long cannot represent a non-integer value: {graphql.print_ast(node)}")
    return _coerce_long(int(node.value))


def _serialize_datetime(value: Any) -> str:
    if isinstance(value, datetime):
        return _timestamp(value)
    raise GraphQLError(f"DateTime cannot represent {value!r}")


def _parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise GraphQLError(f"DateTime must be ISO-8601 text, not {value!r}")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise GraphQLError(f"DateTime cannot represent {value!r}") from exc


def _build_schema() -> graphql.GraphQLSchema:
    schema = graphql.build_schema(SDL_PATH.read_text(encoding="utf-8"))
    _install_scalar(schema, "Long", _coerce_long, _coerce_long, _parse_long_literal)
    _install_scalar(schema, "DateTime", _serialize_datetime, _parse_datetime, None)
    return schema


def _install_scalar(
    schema: graphql.GraphQLSchema,
    name: str,
    output: Callable[[Any], Any],
    value: Callable[[Any], Any],
    literal: Callable[[ValueNode, dict[str, Any] | None], Any] | None,
) -> None:
    """Give an SDL-built scalar its coercions, in place (the schema keeps the same object).

    graphql-core 3.2 reads ``serialize``/``parse_value``/``parse_literal``; 3.3 also keeps copies
    as ``coerce_output_value``/``coerce_input_value``; both are set where they exist.
    """
    scalar = schema.type_map[name]
    assert isinstance(scalar, GraphQLScalarType)
    hooks: list[tuple[tuple[str, ...], Callable[..., Any] | None]] = [
        (("serialize", "coerce_output_value"), output),
        (("parse_value", "coerce_input_value"), value),
        (("parse_literal",), literal),
    ]
    for attributes, function in hooks:
        if function is None:
            continue
        for attribute in attributes:
            if hasattr(scalar, attribute):
                setattr(scalar, attribute, function)


# --------------------------------------------------------------------------------------------------
# The E57 check (worker thread; touches only its arguments).


def _run_checks(checks: Sequence[_FileCheck], stop: threading.Event) -> _Outcome:
    """Check each file in turn; the first failure ends the run (no model)."""
    md5s: dict[str, str] = {}
    for check in checks:
        label = f"{check.name} (clientId {check.client_id})"
        if check.path is None:
            if check.stored_md5:
                md5s[check.client_id] = check.stored_md5
            continue
        try:
            md5 = _check_file(check.path, stop)
        except E57Error as exc:
            return _Outcome(md5s, f"{label} is not a valid E57 file: {exc.reason}")
        except _Stopped:
            return _Outcome(md5s, "the sandbox shut down before the model was made")
        except OSError as exc:
            return _Outcome(md5s, f"{label} could not be read: {exc}")
        md5s[check.client_id] = md5
        if check.stored_md5 and check.stored_md5 != md5:
            return _Outcome(
                md5s,
                f"{label}: the blob store reported MD5 {check.stored_md5} but the object on disk"
                f" has {md5}",
            )
    return _Outcome(md5s, None)


def _check_file(path: Path, stop: threading.Event) -> str:
    """Validate ``path`` as E57 and return its MD5 hex; _Stopped once ``stop`` is set."""
    digest = hashlib.md5(usedforsecurity=False)

    def on_chunk(view: memoryview) -> None:
        if stop.is_set():
            raise _Stopped
        digest.update(view)

    validate_e57(path, on_chunk=on_chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------


class _Faults:
    """Decides which root field calls fail with an injected error.internal (seeded)."""

    def __init__(self, config: MatterportSandboxConfig) -> None:
        self.rate = config.internal_error_rate
        self.pending: Counter[str] = Counter(config.fail_operations)
        self.rng = random.Random(f"{config.seed}:matterport-faults")
        self.injected: Counter[str] = Counter()

    def strike(self, operation: str) -> bool:
        if self.pending[operation] > 0:
            self.pending[operation] -= 1
        elif not (self.rate > 0.0 and self.rng.random() < self.rate):
            return False
        self.injected[operation] += 1
        return True


Handler = Callable[[dict[str, Any], _Caller], Any]


class MatterportPlane:
    """The Import API over one :class:`BlobStore` (see the module docstring for the rules).

    Register it on the sandbox's aiohttp app with :meth:`register`. For tests: ``sessions``
    (id → :class:`ImportSessionRecord`), ``calls`` (root field name → calls, including refused
    and faulted ones), ``call_log`` (root field names in call order), ``errors`` (code → errors
    answered), :meth:`session`, :meth:`md5_of`, :meth:`wait_processed`.
    """

    def __init__(self, config: MatterportSandboxConfig | None, store: BlobStore) -> None:
        self.config = config if config is not None else MatterportSandboxConfig()
        self.store = store
        self.sessions: dict[str, ImportSessionRecord] = {}
        self.calls: Counter[str] = Counter()
        self.call_log: list[str] = []
        self.errors: Counter[str] = Counter()
        self.http_requests = 0
        self._faults = _Faults(self.config)
        self._ids = random.Random(f"{self.config.seed}:matterport-ids")
        self._credentials = {token_id: secret for token_id, secret in self.config.credentials}
        self._schema = _build_schema()
        self._stop = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._install_resolvers()

    def __repr__(self) -> str:
        models = sum(1 for s in self.sessions.values() if s.model_id)
        return (
            f"MatterportPlane(sessions={len(self.sessions)}, models={models}, "
            f"calls={sum(self.calls.values())}, errors={sum(self.errors.values())})"
        )

    # ---- wiring ----------------------------------------------------------------------------------

    def register(self, app: web.Application) -> None:
        """Serve ``POST /api/import/graph`` on ``app``; stop the E57 checks at app cleanup."""
        app.router.add_post(ENDPOINT, self.handle)
        app.on_cleanup.append(self._on_cleanup)

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Abandon running E57 checks and wait for the worker thread to stop (quick)."""
        self._stop.set()
        executor, self._executor = self._executor, None
        if executor is not None:
            await anyio.to_thread.run_sync(
                partial(executor.shutdown, wait=True, cancel_futures=True)
            )

    def stats(self) -> dict[str, Any]:
        """JSON-serialisable counters for ``/_sandbox/stats``."""
        for session in self.sessions.values():
            self._apply_check(session)
        return {
            "http_requests": self.http_requests,
            "sessions": len(self.sessions),
            "committed": sum(1 for s in self.sessions.values() if s.committed),
            "models": sum(1 for s in self.sessions.values() if s.model_id),
            "failed": sum(1 for s in self.sessions.values() if s.failure),
            "files": sum(len(s.files) for s in self.sessions.values()),
            "calls": dict(sorted(self.calls.items())),
            "errors": dict(sorted(self.errors.items())),
            "injected_faults": dict(sorted(self._faults.injected.items())),
        }

    # ---- accessors for tests ---------------------------------------------------------------------

    def session(self, session_id: str) -> ImportSessionRecord:
        """The session, with any finished E57 check applied. KeyError if unknown."""
        session = self.sessions[session_id]
        self._apply_check(session)
        return session

    def md5_of(self, session_id: str, client_id: str) -> str | None:
        """MD5 hex of the assembled file, once the commit check has run (None before)."""
        return self.session(session_id).files[client_id].md5

    async def wait_processed(self, session_id: str) -> ImportSessionRecord:
        """Wait until the session has a modelId or a failure (bound it with anyio.fail_after)."""
        while True:
            session = self.session(session_id)
            if session.model_id is not None or session.failure is not None:
                return session
            await anyio.sleep(_WAIT_POLL)

    # ---- HTTP ------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp handler for ``POST /api/import/graph``."""
        self.http_requests += 1
        caller = self._authenticate(request.headers.get("Authorization"))
        if caller is None:
            return self._refuse(
                401,
                UNAUTHENTICATED,
                "Missing or invalid credentials: send Authorization: Basic base64(tokenId:secret)",
                {"WWW-Authenticate": 'Basic realm="Matterport Import API"'},
            )
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._refuse(400, INVALID, "The request body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return self._refuse(
                400, INVALID, "The body must be a JSON object with a 'query' string"
            )
        variables = body.get("variables")
        operation_name = body.get("operationName")
        if variables is not None and not isinstance(variables, dict):
            return self._refuse(400, INVALID, "'variables' must be a JSON object")
        if operation_name is not None and not isinstance(operation_name, str):
            return self._refuse(400, INVALID, "'operationName' must be a string")
        result = await graphql.graphql(
            self._schema,
            body["query"],
            context_value=caller,
            variable_values=variables,
            operation_name=operation_name,
        )
        payload: dict[str, Any] = {"data": result.data}
        if result.errors:
            payload["errors"] = [self._format_error(error) for error in result.errors]
        return _json(200, payload)

    def _authenticate(self, header: str | None) -> _Caller | None:
        pair = _parse_basic(header)
        if pair is None:
            return None
        token_id, secret = pair
        expected = self._credentials.get(token_id)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            return None
        return _Caller(token_id=token_id, user_id=_user_id(token_id))

    def _refuse(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        self.errors[code] += 1
        payload = {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}
        return _json(status, payload, headers)

    def _format_error(self, error: GraphQLError) -> dict[str, Any]:
        """The one place GraphQL errors get their ``extensions.code``."""
        cause = error.original_error
        if isinstance(cause, ApiError):
            code, message = cause.code, cause.message
        elif error.path is None:
            code, message = INVALID, error.message  # syntax, validation, variable coercion
        else:
            code, message = INTERNAL, "Internal server error"
            _log.error("bug in the Matterport plane at %s", error.path, exc_info=cause or error)
        self.errors[code] += 1
        formatted: dict[str, Any] = {"message": message}
        if error.locations:
            formatted["locations"] = [
                {"line": loc.line, "column": loc.column} for loc in error.locations
            ]
        if error.path is not None:
            formatted["path"] = list(error.path)
        formatted["extensions"] = {"code": code}
        return formatted

    # ---- resolvers -------------------------------------------------------------------------------

    def _install_resolvers(self) -> None:
        query = self._schema.query_type
        mutation = self._schema.mutation_type
        assert query is not None and mutation is not None
        handlers: dict[str, Handler] = {
            "importSession": self._import_session,
            "listImportSessions": self._list_import_sessions,
            "importFilePartsUploadStatus": self._parts_upload_status,
            "addImportSession": self._add_import_session,
            "addE57Object": self._add_e57_object,
            "beginUpload": self._begin_upload,
            "requestPartUpload": self._request_part_upload,
            "completeUpload": self._complete_upload,
            "commitImportSession": self._commit_import_session,
        }
        assert set(handlers) == set(OPERATIONS)
        for root in (query, mutation):
            for name, root_field in root.fields.items():
                root_field.resolve = self._root_resolver(name, handlers[name])

    def _root_resolver(self, name: str, handler: Handler) -> Callable[..., Awaitable[Any]]:
        async def resolve(_root: object, info: Any, **args: Any) -> Any:
            # info is a GraphQLResolveInfo (generic from graphql-core 3.3 on); context: _Caller
            self.calls[name] += 1
            self.call_log.append(name)
            after = self.config.fail_after_effect
            struck = self._faults.strike(name)
            if struck and not after:
                raise ApiError(INTERNAL, f"Internal server error in {name} (injected)")
            result = handler(args, info.context)
            if inspect.isawaitable(result):
                result = await result
            if struck:
                raise ApiError(
                    INTERNAL, f"Internal server error in {name} (injected, after effect)"
                )
            return result

        return resolve

    def _import_session(self, args: dict[str, Any], _caller: _Caller) -> dict[str, Any]:
        session = self._find_session(args["importSessionId"])
        self._apply_check(session)
        return _session_view(session)

    def _list_import_sessions(self, args: dict[str, Any], _caller: _Caller) -> dict[str, Any]:
        model_id = args.get("modelId")
        results = []
        for session in reversed(self.sessions.values()):
            self._apply_check(session)
            if model_id is None or session.model_id == model_id:
                results.append(_session_view(session))
        return {"results": results}

    def _parts_upload_status(self, args: dict[str, Any], _caller: _Caller) -> list[dict[str, Any]]:
        session = self._find_session(args["importSessionId"])
        file = self._find_file(session, args["importFileId"])
        if file.status == "COMPLETED":
            parts: Sequence[StoredPart] = file.parts
        elif file.upload_id is not None:
            parts = self.store.list_parts(file.upload_id)
        else:
            parts = ()
        return [{"eTag": p.etag, "size": p.size, "partNumber": p.number - 1} for p in parts]

    def _add_import_session(self, args: dict[str, Any], caller: _Caller) -> dict[str, Any]:
        organization_id = args["organizationId"]
        if organization_id not in self.config.organizations:
            raise ApiError(
                UNAUTHORIZED, f"This token may not import into organization {organization_id!r}"
            )
        self._check_quota(organization_id)
        now = _now()
        session = ImportSessionRecord(
            id=self._new_id(24, _ALNUM_LOWER),
            organization_id=organization_id,
            user_id=caller.user_id,
            process_type=args["processType"],
            name=args.get("name"),
            description=args.get("description"),
            created=now,
            modified=now,
        )
        self.sessions[session.id] = session
        return _session_view(session)

    def _add_e57_object(self, args: dict[str, Any], _caller: _Caller) -> dict[str, Any]:
        session = self._find_session(args["importSessionId"])
        self._require_open(session)
        spec = args["e57"]
        file_spec = spec["file"]
        client_id = file_spec["clientId"]
        if any(o.client_id == spec["id"] for o in session.objects):
            raise ApiError(
                NOT_UNIQUE, f"An E57 object with id {spec['id']!r} is already in this session"
            )
        if client_id in session.files:
            raise ApiError(
                NOT_UNIQUE, f"A file with clientId {client_id!r} is already in this session"
            )
        if file_spec["size"] <= 0:
            raise ApiError(
                INVALID, f"file size must be a positive number of bytes, not {file_spec['size']}"
            )
        if not file_spec["name"]:
            raise ApiError(INVALID, "file name must not be empty")
        file_id = self._new_id(25, _ALNUM_LOWER)
        record = ImportFileRecord(
            id=file_id,
            client_id=client_id,
            object_id=self._new_id(25, _ALNUM_LOWER),
            name=file_spec["name"],
            type=file_spec["type"],
            size=file_spec["size"],
            key=f"import/{session.id}/{file_id}",
        )
        obj = E57ObjectRecord(id=record.object_id, client_id=spec["id"], files=[record])
        session.objects.append(obj)
        session.files[client_id] = record
        session.modified = _now()
        return {
            "id": obj.id,
            "clientId": obj.client_id,
            "files": [_file_view(f) for f in obj.files],
        }

    def _begin_upload(self, args: dict[str, Any], _caller: _Caller) -> dict[str, Any]:
        session = self._find_session(args["importSessionId"])
        file = self._find_file(session, args["importFileId"])
        if file.status == "STARTED" and self.config.idempotent_retries:
            return _file_view(file)
        self._require_open(session)
        if file.status != "PENDING":
            raise ApiError(INVALID, f"file {file.client_id!r} is already {file.status}")
        file.upload_id = self.store.create_multipart(file.key)
        file.status = "STARTED"
        session.modified = _now()
        return _file_view(file)

    def _request_part_upload(self, args: dict[str, Any], _caller: _Caller) -> dict[str, Any]:
        session = self._find_session(args["importSessionId"])
        file = self._find_file(session, args["importFileId"])
        self._require_open(session)
        self._require_started(file, "requestPartUpload")
        assert file.upload_id is not None
        part: int = args["part"]
        size: int = args["size"]
        min_size, max_size, max_parts = self._limits(file)
        if self.config.single_part and file.size > self.config.max_part_size:
            raise ApiError(
                INVALID,
                f"file {file.client_id!r} is {file.size} bytes; single-part uploads are limited"
                f" to {self.config.max_part_size} bytes",
            )
        if not 0 <= part < max_parts:
            raise ApiError(INVALID, f"part must be in 0..{max_parts - 1} (zero-based), not {part}")
        if size < 1:
            raise ApiError(INVALID, f"size must be a positive number of bytes, not {size}")
        if size > max_size:
            raise ApiError(INVALID, f"size {size} is above maxSize {max_size}")
        if size > file.size:
            raise ApiError(INVALID, f"size {size} is above the file's declared size {file.size}")
        if self.config.single_part and size != file.size:
            raise ApiError(INVALID, f"this file uploads as one part: size must be {file.size}")
        headers = dict(self.config.part_headers)
        url = self.store.presign_part(
            file.key,
            file.upload_id,
            part + 1,
            expires_in=self.config.url_expiry,
            required_headers=headers or None,
        )
        # Only URLs issued here can store a part, so a part never requested is not stored: the
        # common first request skips listing (which would make a 10,000-part upload quadratic).
        completed = part in file.requested and any(
            p.number == part + 1 for p in self.store.list_parts(file.upload_id)
        )
        record = {
            "url": url,
            "minSize": min_size,
            "maxSize": max_size,
            "headers": [{"key": k, "value": v} for k, v in self.config.part_headers],
            "method": "PUT",
            "completed": completed,
            "partNumber": part,
        }
        file.requested[part] = record
        return record

    async def _complete_upload(self, args: dict[str, Any], _caller: _Caller) -> dict[str, Any]:
        session = self._find_session(args["importSessionId"])
        file = self._find_file(session, args["importFileId"])
        etags = [_etag_of(index, entry) for index, entry in enumerate(args["completedParts"])]
        if file.status == "COMPLETED" and self.config.idempotent_retries:
            recorded = [normalize_etag(p.etag) for p in file.parts]
            if [normalize_etag(e) for e in etags] == recorded:
                return _file_view(file)
        self._require_open(session)
        self._require_started(file, "completeUpload")
        assert file.upload_id is not None
        if file.completing:
            raise ApiError(INTERNAL, f"completion of file {file.client_id!r} is in progress; retry")
        min_size, max_size, _ = self._limits(file)
        stored = {p.number: p for p in self.store.list_parts(file.upload_id)}
        listed = check_completion(
            etags, stored, file_size=file.size, min_size=min_size, max_size=max_size
        )
        file.completing = True
        try:
            obj = await self.store.complete_multipart_async(
                file.key, file.upload_id, listed, min_part_size=min_size
            )
        except BlobError as exc:
            code = INTERNAL if exc.status >= 500 else INVALID
            raise ApiError(
                code, f"storage refused the completion: {exc.code}: {exc.message}"
            ) from exc
        finally:
            file.completing = False
        file.parts = tuple(stored[number] for number, _ in listed)
        file.stored = obj
        file.status = "COMPLETED"
        session.modified = _now()
        return _file_view(file)

    def _commit_import_session(self, args: dict[str, Any], _caller: _Caller) -> dict[str, Any]:
        session = self._find_session(args["importSessionId"])
        if session.committed and self.config.idempotent_retries:
            return _session_view(session, files=False)
        self._require_open(session)
        if not session.files:
            raise ApiError(INVALID, "the session has no files: add an E57 object first")
        for file in session.files.values():
            if file.status != "COMPLETED":
                raise ApiError(
                    INVALID,
                    f"file {file.client_id!r} is {file.status}; every file must be COMPLETED"
                    " before commitImportSession",
                )
        self._check_quota(session.organization_id)
        checks = []
        for file in session.files.values():
            assert file.stored is not None
            checks.append(
                _FileCheck(
                    client_id=file.client_id,
                    name=file.name,
                    path=self.store.object_path(file.key),
                    stored_md5=file.stored.md5,
                )
            )
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="matterport-e57")
        session.check = self._executor.submit(_run_checks, tuple(checks), self._stop)
        session.committed = True
        session.committed_at = time.monotonic()
        session.modified = _now()
        return _session_view(session, files=False)

    # ---- helpers ---------------------------------------------------------------------------------

    def _find_session(self, session_id: str) -> ImportSessionRecord:
        session = self.sessions.get(session_id)
        if session is None:
            raise ApiError(NOT_FOUND, f"No import session with id {session_id!r}")
        return session

    @staticmethod
    def _find_file(session: ImportSessionRecord, client_id: str) -> ImportFileRecord:
        file = session.files.get(client_id)
        if file is None:
            raise ApiError(
                NOT_FOUND,
                f"No file with clientId {client_id!r} in import session {session.id!r}"
                " (importFileId takes the file's clientId)",
            )
        return file

    @staticmethod
    def _require_open(session: ImportSessionRecord) -> None:
        if session.committed:
            raise ApiError(INVALID, f"import session {session.id!r} is already committed")

    @staticmethod
    def _require_started(file: ImportFileRecord, operation: str) -> None:
        if file.status == "PENDING":
            raise ApiError(
                INVALID, f"file {file.client_id!r} is PENDING: call beginUpload before {operation}"
            )
        if file.status == "COMPLETED":
            raise ApiError(INVALID, f"file {file.client_id!r} is already COMPLETED")

    def _limits(self, file: ImportFileRecord) -> tuple[int, int, int]:
        """(minSize, maxSize, max part count) for ``file``."""
        if self.config.single_part:
            return file.size, file.size, 1
        return self.config.min_part_size, self.config.max_part_size, self.config.max_parts

    def _check_quota(self, organization_id: str) -> None:
        quota = self.config.quota
        if quota is None:
            return
        used = 0
        for session in self.sessions.values():
            if session.organization_id == organization_id:
                self._apply_check(session)
                used += session.counts_against_quota
        if used >= quota:
            raise ApiError(
                QUOTA_EXCEEDED,
                f"Organization {organization_id!r} has used its quota of {quota} models",
            )

    def _apply_check(self, session: ImportSessionRecord) -> None:
        """Take a finished E57 check's result; make the model once ``model_delay`` has passed."""
        check = session.check
        if check is None or not check.done() or session.committed_at is None:
            return
        if time.monotonic() < session.committed_at + self.config.model_delay:
            return
        session.check = None
        try:
            outcome = check.result()
        except Exception as exc:  # a bug in the check itself: no model, say why
            outcome = _Outcome({}, f"the E57 check crashed: {type(exc).__name__}: {exc}")
        for client_id, md5 in outcome.md5.items():
            session.files[client_id].md5 = md5
        if outcome.failure is not None:
            session.failure = outcome.failure
        else:
            session.model_id = self._new_id(11, _ALNUM)
            session.modified = _now()

    def _new_id(self, length: int, alphabet: str) -> str:
        return "".join(self._ids.choice(alphabet) for _ in range(length))


# --------------------------------------------------------------------------------------------------
# Views: records as the GraphQL types' fields.


def _file_view(file: ImportFileRecord) -> dict[str, Any]:
    started = file.status == "STARTED"
    return {
        "id": file.id,
        "clientId": file.client_id,
        "name": file.name,
        "type": file.type,
        "size": file.size,
        "uploadStatus": file.status,
        "numParts": len(file.requested) if started else None,
        "parts": [file.requested[i] for i in sorted(file.requested)] if started else None,
    }


def _session_view(session: ImportSessionRecord, *, files: bool = True) -> dict[str, Any]:
    return {
        "id": session.id,
        "organizationId": session.organization_id,
        "userId": session.user_id,
        "name": session.name,
        "description": session.description,
        "processType": session.process_type,
        "created": session.created,
        "modified": session.modified,
        "committed": session.committed,
        "modelId": session.model_id,
        "files": [_file_view(f) for f in session.files.values()] if files else [],
    }


def _etag_of(index: int, entry: Mapping[str, Any]) -> str:
    values = [h["value"] for h in entry["headers"] if h["key"].strip().lower() == "etag"]
    if len(values) != 1 or not values[0].strip():
        raise ApiError(
            INVALID,
            f"completedParts[{index}] must carry exactly one non-empty ETag header"
            ' ({key: "ETag", value: "<etag>"})',
        )
    return str(values[0])


def _json(
    status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        headers=headers,
    )
