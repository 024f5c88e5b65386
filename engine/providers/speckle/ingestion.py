"""Starting, recovering and waiting for the ingestion of one stored blob into one model.

The calls, once the blob is stored under its ``fileId``:

- ``fileUploadMutations.startFileIngestion(projectId, modelId, fileId, etag)`` with the ETag
  exactly as the storage returned it, quotes included;
- ``project(id).ingestion(id)`` is polled every ``poll_interval`` seconds (growing by half per
  poll, up to ten times that) within ``ingestion_deadline``, until ``success`` (its
  ``versionId``) or a terminal failure — ``failed``, ``timeout``, ``invalidInput``, ``cancelled``
  — raised as ``ProcessingError`` with the server's reason. Each change of status, message or
  progress is a ``Phase`` event.

Rules:
- ``startFileIngestion`` is not idempotent (a second call for a ``fileId`` fails with
  ``ALREADY_REGISTERED_BLOB_ERROR``). It is sent with ``retry=False``, and only after the journal
  holds ``IngestionRequested`` (the ETag and the time) and ``Mark.INGESTION_REQUESTED``; the
  ingestion id is journaled (``IngestionStarted``) as soon as it is known. When the mark is there
  but the id is not (a crash, a lost answer, a 5xx or 429 whose outcome is unknown) the ingestion
  is looked up before anything is sent again: exactly, on servers that list a model's
  ``ingestionHistory`` with each ingestion's file-upload ``handler.blobId``
  (app.speckle.systems: the ``blobId`` is our ``fileId``); where that query is not in the
  schema, ``startFileIngestion`` is sent once more, and ``ALREADY_REGISTERED_BLOB_ERROR`` means
  ours is registered: it is the model's ``latestIngestion`` created since the journaled time.
  At most ``_START_ROUNDS`` more sends, each after the retry policy's backoff and never less
  than ``poll_interval`` after a failure of unknown outcome.
- A journaled ingestion id is polled, not started.
- A terminal ingestion failure voids the upload in the journal (``UploadVoided``: the blob is
  registered and cannot be ingested twice), so a rerun starts over with a new ``fileId``.
  Running out of ``ingestion_deadline`` does not: a rerun keeps polling the same ingestion.
- Every wait goes through ``engine.wait`` and the services' clock; nothing sleeps by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from engine.errors import (
    ConflictError,
    InvalidRequestError,
    ProcessingError,
    RemoteError,
    ServiceError,
)
from engine.graphql import GraphQLClient, dig, need_obj, need_str
from engine.journal import IngestionRequested, IngestionStarted, Mark, UploadVoided
from engine.providers.speckle.documents import (
    FAILURE_TYPES,
    INGESTION,
    MODEL_INGESTION_HISTORY,
    MODEL_LATEST_INGESTION,
    PLATFORM,
    START_FILE_INGESTION,
    TERMINAL_FAILURES,
)
from engine.providers.speckle.results import SpeckleVersion
from engine.retry import RetryPolicy
from engine.target import TargetContext
from engine.wait import Attempts, Polls

__all__ = ["Blob", "Ingestion", "IngestionStatus", "read_status"]

_START_ROUNDS: Final = 5  # lookups (and at most this many sends) while recovering a completion
_HISTORY_LIMIT: Final = 50  # recent ingestions of the model searched for our fileId
_CLOCK_SKEW: Final = timedelta(minutes=5)  # client/server clock difference tolerated

# ---- reading answers (pure) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IngestionStatus:
    """One answer of the ``Ingestion`` query. ``failure`` is the server's reason once the
    ingestion ended without a version, else ``None``; ``progress`` is in [0, 1] when given;
    ``version_id`` is set once it succeeded."""

    status: str
    typename: str
    message: str
    progress: float | None
    version_id: str = ""
    failure: str | None = None

    @property
    def key(self) -> tuple[str, str, float | None]:
        """What a ``Phase`` reports: a change of any of it is a new event."""
        return self.status, self.message, self.progress

    @property
    def phase(self) -> str:
        return f"ingestion {self.status}" + (f": {self.message}" if self.message else "")


def read_status(sd: dict[str, Any]) -> IngestionStatus:
    """The status an ``Ingestion`` answer's ``statusData`` describes (a success without a
    ``versionId`` is a malformed answer: ``ServiceError``)."""
    status, typename = str(sd.get("status") or ""), str(sd.get("__typename") or "")
    progress = sd.get("progress")
    out = IngestionStatus(
        status=status,
        typename=typename,
        message=str(sd.get("progressMessage") or ""),
        progress=float(progress) if isinstance(progress, int | float) else None,
    )
    if status == "success":
        version_id = need_str(sd.get("versionId"), "Ingestion", PLATFORM, "versionId")
        return replace(out, version_id=version_id)
    if status in TERMINAL_FAILURES or typename in FAILURE_TYPES:
        reason = (
            sd.get("errorReason")
            or sd.get("validationMessage")
            or sd.get("cancellationMessage")
            or "no reason given"
        )
        return replace(out, failure=str(reason))
    return out


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (naive ones are UTC), or ``None``."""
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def ingestion_of(items: Iterable[Any] | None, file_id: str) -> str:
    """The id of the ingestion in ``ingestionHistory.items`` whose blob is ``file_id``, or ""."""
    for item in items or ():
        if dig(item, "handler", "blobId") == file_id:
            return need_str(dig(item, "id"), "ModelIngestionHistory", PLATFORM, "ingestion id")
    return ""


def latest_since(latest: Any, since: datetime | None) -> str:
    """The ``latestIngestion``'s id if it was created since ``since`` (clock skew tolerated)."""
    created = parse_time(dig(latest, "createdAt"))
    if since is None or created is None or created < since - _CLOCK_SKEW:
        return ""
    return need_str(dig(latest, "id"), "ModelLatestIngestion", PLATFORM, "ingestion id")


def resend_pause(policy: RetryPolicy, attempt: int, jitter: float, floor: float) -> float:
    """Seconds before resend ``attempt`` (>= 1) after an unknown outcome: the policy's backoff,
    never less than ``floor`` (``retry=False`` does not wait out a ``Retry-After``)."""
    return max(policy.delay(attempt, jitter), floor)


# ---- the calls -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Blob:
    """A stored file to ingest: its project, the model it goes to and its ``fileId``."""

    project_id: str
    model_id: str
    file_id: str

    @property
    def model(self) -> dict[str, str]:
        """The variables that name the blob's model."""
        return {"projectId": self.project_id, "modelId": self.model_id}

    def version(self, ingestion_id: str, version_id: str) -> SpeckleVersion:
        """Where the blob landed once ``ingestion_id`` made ``version_id``."""
        return SpeckleVersion(
            project_id=self.project_id,
            model_id=self.model_id,
            file_id=self.file_id,
            ingestion_id=ingestion_id,
            version_id=version_id,
        )


@dataclass(eq=False, slots=True)
class Ingestion:
    """The ingestion of ``blob``: started once, found again, awaited.

    poll_interval: seconds between status queries (growing up to ten times this), and the
                   shortest pause before sending ``startFileIngestion`` again.
    deadline:      seconds to wait for the ingestion to end.
    """

    gql: GraphQLClient = field(repr=False)
    ctx: TargetContext = field(repr=False)
    blob: Blob
    poll_interval: float
    deadline: float
    history_listed: bool = field(default=True, init=False)  # until the schema says otherwise

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

    def start_variables(self, etag: str) -> dict[str, Any]:
        # The ETag exactly as storage returned it, quotes included.
        return {"input": {**self.blob.model, "fileId": self.blob.file_id, "etag": etag}}

    async def send_start(self, etag: str) -> str:
        """Send ``startFileIngestion`` once; journal the id it returns."""
        data = await self.gql.execute(START_FILE_INGESTION, self.start_variables(etag), retry=False)
        ingestion_id = need_str(
            dig(data, "fileUploadMutations", "startFileIngestion", "id"),
            "StartFileIngestion",
            PLATFORM,
            "ingestion id",
        )
        self.ctx.journal.record(IngestionStarted(ingestion_id=ingestion_id))
        return ingestion_id

    async def start(self, etag: str) -> str:
        # Journal first (fsynced): a rerun must know the call may have happened.
        now = self.ctx.services.clock.now()
        self.ctx.journal.record(IngestionRequested(etag=etag, requested_at=now.isoformat()))
        self.ctx.journal.mark(Mark.INGESTION_REQUESTED)
        self.ctx.phase("starting ingestion")
        try:
            return await self.send_start(etag)
        except (ServiceError, ConflictError) as exc:  # outcome unknown, or registered: look
            return await self.recover(etag, exc)

    # ---- recovering ------------------------------------------------------------------------------

    async def recover(self, etag: str, last: RemoteError | None = None) -> str:
        """The call may have happened: find its ingestion; send it again only if none exists.

        ``last`` is why we are unsure: a ``ServiceError`` (5xx, 429, lost connection: unknown
        outcome), a ``ConflictError`` (ALREADY_REGISTERED_BLOB_ERROR: registered) or ``None``
        (a rerun found the mark)."""
        self.ctx.phase("looking for the ingestion requested earlier")
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
            if isinstance(last, ConflictError):
                raise ConflictError(
                    f"StartFileIngestion: file {self.blob.file_id} is registered, but no "
                    f"ingestion of it was found on model {self.blob.model_id}: {last}",
                    code=last.code,
                )
            if attempt.last:
                raise ServiceError(
                    f"StartFileIngestion: no answer for file {self.blob.file_id} after "
                    f"{attempt.number - 1} more tries; last: {last}",
                    code=last.code if last is not None else "",
                )
            attempt.retry_after = (
                0.0
                if last is None
                else resend_pause(
                    policy, attempt.number, services.clock.jitter(), self.poll_interval
                )
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _look_up(self, last: RemoteError | None) -> str:
        """Our ingestion's id, or "": by file where the server lists them; else, once the server
        said the blob is registered, the model's latest ingestion since our request."""
        exact, found = await self._find()
        if not found and not exact and isinstance(last, ConflictError):
            found = await self._latest()
        return found

    async def _find(self) -> tuple[bool, str]:
        """(whether the server can list ingestions by file, the id of ours or "")."""
        if not self.history_listed:
            return False, ""
        try:
            data = await self.gql.execute(
                MODEL_INGESTION_HISTORY,
                {**self.blob.model, "limit": _HISTORY_LIMIT},
            )
        except InvalidRequestError as exc:
            if exc.code == "GRAPHQL_VALIDATION_FAILED":  # no ingestionHistory in this schema
                self.history_listed = False  # do not ask again
                return False, ""
            raise
        items = dig(data, "project", "model", "ingestionHistory", "items")
        return True, ingestion_of(items, self.blob.file_id)

    async def _latest(self) -> str:
        """The model's latest ingestion if it was created since our journaled request, or ""."""
        data = await self.gql.execute(MODEL_LATEST_INGESTION, self.blob.model)
        requested = self.ctx.journal.state.get(IngestionRequested)
        since = parse_time(requested.requested_at) if requested is not None else None
        return latest_since(dig(data, "project", "model", "latestIngestion"), since)

    # ---- waiting ---------------------------------------------------------------------------------

    async def wait_version(self, ingestion_id: str) -> str:
        """Poll until success (return the version id) or a terminal failure (raise)."""
        ctx = self.ctx
        seen: IngestionStatus | None = None
        polls = Polls(
            ctx.services.clock,
            interval=self.poll_interval,
            ceiling=self.poll_interval * 10,
            deadline=self.deadline,
        )
        async for _ in polls:
            data = await self.gql.execute(
                INGESTION, {"ingestionId": ingestion_id, "projectId": self.blob.project_id}
            )
            sd = need_obj(dig(data, "project", "ingestion", "statusData"), "Ingestion", PLATFORM)
            now = read_status(sd)
            if seen is None or now.key != seen.key:
                ctx.phase(now.phase, now.progress)
            seen = now
            if now.version_id:
                return now.version_id
            if now.failure is not None:
                ctx.journal.record(UploadVoided())  # the blob is spent: a rerun starts over
                raise ProcessingError(
                    f"{ctx.file.path.name}: Speckle ingestion {ingestion_id} ended "
                    f"{now.status or now.typename}: {now.failure}",
                    code=now.status,
                )
        status = seen.status if seen is not None else "unknown"
        raise ProcessingError(
            f"{ctx.file.path.name}: Speckle ingestion {ingestion_id} still {status} after "
            f"{self.deadline:g} s; rerun to keep waiting",
            code="deadline",
        )
