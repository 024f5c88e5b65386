"""Starting, recovering and waiting for the ingestion of one stored blob into one model.

``Ingestion`` runs the steps every API shares; a ``Flow`` says how one API takes them: the
v3 ingestion API here (``IngestionFlow``), the v2 file import and the legacy REST upload in
``legacy``. For v3, once the blob is stored under its ``fileId``:
``fileUploadMutations.startFileIngestion(projectId, modelId, fileId, etag)`` with the ETag
exactly as the storage returned it, quotes included; then ``project(id).ingestion(id)``
(nullable: ``null`` is a ``NotFoundError``) or the live subscription until a terminal status
(``status.Watch``).

Rules:
- the start is not idempotent (a second call for a blob fails with
  ``ALREADY_REGISTERED_BLOB_ERROR``: speckle-server ``blobstorage/services/presigned.ts``). It
  is sent with ``retry=False``, only after the journal holds ``SpeckleApiChosen`` (which API
  is asked), ``IngestionRequested`` (the ETag and the time) and ``Mark.INGESTION_REQUESTED``;
  its id is journaled (``IngestionStarted``) as soon as it is known, and a journaled id is
  waited on, never started again, by the API that started it;
- recovery (the mark is there, the id is not: a crash, a lost answer, a 5xx or a 429 whose
  outcome is unknown) never depends on one query: the flow's exact lookup (v3:
  ``Model.ingestionHistory`` by the file-upload handler's ``blobId``) is asked with
  ``retry=False`` and any failure — an error, ``null``, the field unsupported,
  ``INTERNAL_SERVER_ERROR`` — only means "not found this way". Then the blob is looked at
  (``Project.blob``: ``uploadStatus`` 0 pending, 1 registered, 2 failed; unsupported: unknown):
  failed → the upload is void and the rerun starts fresh; registered, or the server said
  ``ALREADY_REGISTERED_BLOB_ERROR`` → the model's latest ingestion since the journaled request
  is ours (v3), else one clear line says what to do (``touch`` the file and rerun to upload
  it again) — nothing is started twice; pending or unknown → the start is sent (again): the
  server refuses a second one, so this is safe. At most ``_START_ROUNDS`` more sends, each
  after the retry policy's backoff and never less than ``poll_interval`` after a failure of
  unknown outcome;
- a non-transient refusal of the start (too large, unsupported type, unknown blob, ETag
  mismatch, model gone) voids the upload (``UploadVoided``) so the rerun starts fresh; a bad
  token or a missing permission does not (a rerun with the right token finishes it);
- every wait goes through ``engine.wait`` / ``status.Watch`` and the services' clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final

from engine.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RemoteError,
    ServiceError,
    UploadError,
)
from engine.graphql import GraphQLClient, dig, need_obj, need_str
from engine.journal import (
    IngestionRequested,
    IngestionStarted,
    Mark,
    SpeckleApiChosen,
    UploadVoided,
)
from engine.providers.speckle.documents import (
    INGESTION,
    INGESTION_UPDATED,
    MODEL_INGESTION_HISTORY,
    MODEL_LATEST_INGESTION,
    PLATFORM,
    PROJECT_BLOB,
    START_FILE_INGESTION,
)
from engine.providers.speckle.errors import input_refusal, is_unsupported
from engine.providers.speckle.live import LiveFeed
from engine.providers.speckle.results import SpeckleVersion
from engine.providers.speckle.status import IngestionStatus, Watch, read_status
from engine.retry import RetryPolicy
from engine.target import TargetContext
from engine.wait import Attempts

if TYPE_CHECKING:
    from engine.providers.speckle.server import ServerApi, SpeckleSession

__all__ = ["Blob", "Flow", "Ingestion", "IngestionFlow", "parse_time", "resend_pause"]

_START_ROUNDS: Final = 5  # lookups (and at most this many sends) while recovering a start
_HISTORY_LIMIT: Final = 50  # recent ingestions of the model searched for our fileId
_CLOCK_SKEW: Final = timedelta(minutes=5)  # client/server clock difference tolerated
_BLOB_STATES: Final = {0: "pending", 1: "registered", 2: "failed"}


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (naive ones are UTC), or ``None``."""
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def since(created: Any, requested: datetime | None) -> bool:
    """True when ``created`` is not before ``requested`` (clock skew tolerated)."""
    when = parse_time(created)
    return requested is not None and when is not None and when >= requested - _CLOCK_SKEW


def resend_pause(policy: RetryPolicy, attempt: int, jitter: float, floor: float) -> float:
    """Seconds before resend ``attempt`` (>= 1) after an unknown outcome: the policy's backoff,
    never less than ``floor`` (``retry=False`` does not wait out a ``Retry-After``)."""
    return max(policy.delay(attempt, jitter), floor)


@dataclass(frozen=True, slots=True)
class Blob:
    """A stored file to ingest: its project, the model it goes to and its ``fileId`` (for the
    legacy REST upload, "" until the server names it)."""

    project_id: str
    model_id: str
    file_id: str

    @property
    def model(self) -> dict[str, str]:
        """The variables that name the blob's model."""
        return {"projectId": self.project_id, "modelId": self.model_id}

    def version(self, ingestion_id: str, version_id: str) -> SpeckleVersion:
        return SpeckleVersion(
            project_id=self.project_id,
            model_id=self.model_id,
            file_id=self.file_id or ingestion_id,
            ingestion_id=ingestion_id,
            version_id=version_id,
        )


class Flow(ABC):
    """How one API starts, finds and reports an ingestion (see the module rules)."""

    api: ClassVar[str] = ""
    start_op: ClassVar[str] = ""  # the operation that starts it, for messages
    noun: ClassVar[str] = "ingestion"

    def __init__(
        self, gql: GraphQLClient, ctx: TargetContext, blob: Blob, session: SpeckleSession
    ) -> None:
        self.gql = gql
        self.ctx = ctx
        self.blob = blob
        self.session = session

    @property
    def server(self) -> ServerApi:
        return self.session.server

    async def ask(self, document: str, variables: dict[str, Any]) -> Any:
        """A lookup the server may not be able to answer: its data, or ``None``."""
        return await self.session.ask(self.gql, document, variables)

    @abstractmethod
    async def send(self, etag: str) -> str:
        """Start it, once (no retry of an unknown outcome); return its id."""

    @abstractmethod
    async def find(self) -> str:
        """Its id, looked up exactly where the server allows it, or ""; never raises for a
        lookup the server cannot answer."""

    async def find_latest(self) -> str:
        """With the blob known to be registered: its id by a looser lookup, or ""."""
        return ""

    @abstractmethod
    async def poll(self, ingestion_id: str) -> IngestionStatus: ...

    def live(self, ingestion_id: str) -> tuple[str, dict[str, Any], str] | None:
        """The subscription (document, variables, name) that reports it, if any."""
        return None

    def read_live(self, data: dict[str, Any]) -> IngestionStatus | None:
        return None

    async def register(self, document: str, field: str, etag: str) -> str:
        """Send ``fileUploadMutations.<field>(input: StartFileImportInput)`` once (v3 and v2
        take the same input) with the ETag exactly as storage returned it, quotes included;
        the id it answers."""
        variables = {"input": {**self.blob.model, "fileId": self.blob.file_id, "etag": etag}}
        data = await self.gql.execute(document, variables, retry=False)
        answer = dig(data, "fileUploadMutations", field, "id")
        return need_str(answer, self.start_op, PLATFORM, f"{self.noun} id")

    async def blob_state(self) -> tuple[str, str]:
        """(``pending`` | ``registered`` | ``failed`` | ``unknown``, the blob's error)."""
        if not self.blob.file_id or not self.server.blob:
            return "unknown", ""
        variables = {"projectId": self.blob.project_id, "blobId": self.blob.file_id}
        blob = dig(await self.ask(PROJECT_BLOB, variables), "project", "blob")
        state = _BLOB_STATES.get(dig(blob, "uploadStatus"), "unknown")
        return state, str(dig(blob, "uploadError") or "")


class IngestionFlow(Flow):
    """v3: ``startFileIngestion``, ``Project.ingestion``, ``projectModelIngestionUpdated``."""

    api = "v3"
    start_op = "StartFileIngestion"

    async def send(self, etag: str) -> str:
        return await self.register(START_FILE_INGESTION, "startFileIngestion", etag)

    async def find(self) -> str:
        if not self.server.history:
            return ""
        variables = {**self.blob.model, "limit": _HISTORY_LIMIT}
        data = await self.ask(MODEL_INGESTION_HISTORY, variables)
        for item in dig(data, "project", "model", "ingestionHistory", "items") or ():
            if dig(item, "handler", "blobId") == self.blob.file_id:
                return str(dig(item, "id") or "")
        return ""

    async def find_latest(self) -> str:
        data = await self.ask(MODEL_LATEST_INGESTION, self.blob.model)
        latest = dig(data, "project", "model", "latestIngestion")
        requested = self.ctx.journal.state.get(IngestionRequested)
        when = parse_time(requested.requested_at) if requested is not None else None
        return str(dig(latest, "id") or "") if since(dig(latest, "createdAt"), when) else ""

    async def poll(self, ingestion_id: str) -> IngestionStatus:
        variables = {"ingestionId": ingestion_id, "projectId": self.blob.project_id}
        data = await self.gql.execute(INGESTION, variables)
        ingestion = dig(data, "project", "ingestion")
        if ingestion is None:  # Project.ingestion is nullable: an unknown id
            raise NotFoundError(
                f"Ingestion: ingestion {ingestion_id} not found in project {self.blob.project_id}",
                code="NOT_FOUND",
            )
        return read_status(need_obj(dig(ingestion, "statusData"), "Ingestion", PLATFORM))

    def live(self, ingestion_id: str) -> tuple[str, dict[str, Any], str] | None:
        reference = {"ingestionId": ingestion_id}
        variables = {"input": {"projectId": self.blob.project_id, "ingestionReference": reference}}
        return INGESTION_UPDATED, variables, "IngestionUpdated"

    def read_live(self, data: dict[str, Any]) -> IngestionStatus | None:
        sd = dig(data, "projectModelIngestionUpdated", "modelIngestion", "statusData")
        return read_status(sd) if isinstance(sd, dict) else None


@dataclass(eq=False, slots=True)
class Ingestion:
    """The ingestion of ``flow.blob``: started once, found again, awaited.

    poll_interval: seconds between status queries (growing up to ten times this), and the
                   shortest pause before sending the start again.
    deadline:      seconds to wait for the ingestion to end.
    """

    flow: Flow
    session: SpeckleSession = field(repr=False)
    poll_interval: float
    deadline: float

    @property
    def ctx(self) -> TargetContext:
        return self.flow.ctx

    async def run(self, etag: str) -> tuple[str, str]:
        """Start (or resume) the ingestion and wait for it: (ingestion id, version id)."""
        st = self.ctx.journal.state
        started = st.get(IngestionStarted)
        if started is not None:
            ingestion_id = started.ingestion_id
        elif Mark.INGESTION_REQUESTED in st.marks:
            ingestion_id = await self.recover(etag)
        else:
            ingestion_id = await self.start(etag)
        return ingestion_id, await self.wait_version(ingestion_id)

    # ---- starting --------------------------------------------------------------------------------

    async def send_start(self, etag: str) -> str:
        """Send the start once; journal its id. A refusal that no retry can fix voids the upload
        (raised as the file's ``InputError`` where it is about the file)."""
        try:
            ingestion_id = await self.flow.send(etag)
        except (ServiceError, ConflictError, AuthenticationError, PermissionDeniedError):
            raise
        except RemoteError as exc:
            if is_unsupported(exc):  # nothing ran: the caller may ask another API
                raise
            raise self._spent(exc) from None
        self.ctx.journal.record(IngestionStarted(ingestion_id=ingestion_id))
        return ingestion_id

    async def start(self, etag: str) -> str:
        # Journal first (fsynced): a rerun must know the call may have happened, and how.
        journal = self.ctx.journal
        now = self.ctx.services.clock.now()
        journal.record(SpeckleApiChosen(api=self.flow.api))
        journal.record(IngestionRequested(etag=etag, requested_at=now.isoformat()))
        journal.mark(Mark.INGESTION_REQUESTED)
        self.ctx.phase(f"starting the {self.flow.noun}")
        try:
            return await self.send_start(etag)
        except (ServiceError, ConflictError) as exc:  # outcome unknown, or registered: look
            return await self.recover(etag, exc)

    def _spent(self, exc: RemoteError) -> UploadError:
        """Void the upload (a rerun starts fresh) and say why, as the file's error if it is."""
        self.ctx.journal.record(UploadVoided())
        file = self.ctx.file
        return input_refusal(exc, file.path, file.size) or exc

    # ---- recovering ------------------------------------------------------------------------------

    async def recover(self, etag: str, last: RemoteError | None = None) -> str:
        """The start may have happened: find it; send it again only if nothing says it did.

        ``last`` is why we are unsure: a ``ServiceError`` (5xx, 429, lost connection: unknown
        outcome), a ``ConflictError`` (ALREADY_REGISTERED_BLOB_ERROR: registered) or ``None``
        (a rerun found the mark)."""
        self.ctx.phase(f"looking for the {self.flow.noun} requested earlier")
        services = self.ctx.services
        policy = services.retry
        rounds = replace(
            policy,
            max_attempts=_START_ROUNDS + 1,
            retry_after_cap=max(policy.cap, self.poll_interval),
        )
        async for attempt in Attempts(rounds, services.clock):
            if attempt.number > 1:
                try:
                    return await self.send_start(etag)
                except (ConflictError, ServiceError) as exc:  # registered after all / unsure
                    last = exc
            found = await self._look_up(last)
            if found:
                self.ctx.journal.record(IngestionStarted(ingestion_id=found))
                return found
            if attempt.last:
                raise ServiceError(
                    f"{self.flow.start_op}: no answer for {self._what} after "
                    f"{attempt.number - 1} more tries; last: {last}; rerun to try again",
                    code=last.code if last is not None else "",
                )
            pause = resend_pause(
                policy, attempt.number, services.clock.jitter(), self.poll_interval
            )
            attempt.retry_after = 0.0 if last is None else pause
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def _what(self) -> str:
        blob = self.flow.blob
        return f"file {blob.file_id}" if blob.file_id else self.ctx.file.path.name

    async def _look_up(self, last: RemoteError | None) -> str:
        """Our id, "" when nothing says it was started; raise when it cannot be started again."""
        found = await self.flow.find()
        if found:
            return found
        state, error = await self.flow.blob_state()
        if state == "failed":
            raise self._spent(ConflictError(f"{self.flow.start_op}: {error}", code="BLOB_FAILED"))
        if state != "registered" and not isinstance(last, ConflictError):
            return ""
        found = await self.flow.find_latest()
        if found:
            return found
        if isinstance(last, ConflictError) and input_refusal(last, self.ctx.file.path, 0):
            raise self._spent(last)
        blob = self.flow.blob
        raise ConflictError(
            f"{self.flow.start_op}: {self.ctx.file.path.name} was registered by an earlier run "
            f"({self._what}), but no {self.flow.noun} of it is visible on model "
            f"{blob.model_id}, so none is started again; if no new version appears in that "
            "model, `touch` the file and rerun to upload it anew",
            code=last.code if last is not None else "ALREADY_REGISTERED_BLOB_ERROR",
        )

    # ---- waiting ---------------------------------------------------------------------------------

    async def wait_version(self, ingestion_id: str) -> str:
        """Wait until success (return the version id) or raise (``status.Watch``)."""
        flow = self.flow
        watch = Watch(
            self.ctx,
            f"Speckle {flow.noun} {ingestion_id}",
            lambda: flow.poll(ingestion_id),
            flow.read_live,
            self.poll_interval,
            self.deadline,
        )
        subscription = flow.live(ingestion_id) if flow.server.live else None
        if subscription is None:
            return (await watch.until_done(None)).version_id
        async with self.session.live.hub(flow.blob.project_id) as hub:
            feed = await LiveFeed.open(hub, *subscription) if hub is not None else None
            try:
                return (await watch.until_done(feed)).version_id
            finally:
                if feed is not None:
                    await feed.close()
