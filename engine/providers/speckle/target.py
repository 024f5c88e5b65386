"""One file into one Speckle model: the ``Target`` the engine drives.

The flow (``POST {server}/graphql``, ``Authorization: Bearer <token>``), per file:

1. ``prepare``: the local checks (``errors.check_local``); what the server offers
   (``server.SpeckleSession.api``: detected once per uploader) and its size limit, checked
   before any byte is sent; the model: ``model_id`` is checked with ``project.model(id)``; a
   name (default: the file's stem) is looked up with ``project.modelByName`` and created with
   ``modelMutations.create`` when the server says it is absent (``BRANCH_NOT_FOUND`` from the
   public resolvers, ``MODEL_NOT_FOUND``, ``NOT_FOUND_ERROR``); a create refused as taken is
   a model made meanwhile or one whose name differs only in case (``modelByName`` matches the
   stored name exactly; ``project.models(filter: {search})`` finds it); then, for v3 and v2,
   ``fileUploadMutations.generateUploadUrl(projectId, fileName)`` → ``url``, ``fileId`` (and,
   on v3, ``additionalRequestHeaders``);
2. one part: one PUT of the whole file with every additional header and
   ``Content-Type: application/octet-stream``; an expired URL gets a new ``generateUploadUrl``
   (a new ``fileId``). The legacy REST API has no PUT: its bytes go in ``complete``;
3. ``complete``: the ingestion (``ingestion.Ingestion`` with the API's ``Flow``), then the
   ``SpeckleVersion``; a rerun of a file the journal says is done asks ``project.version`` that
   it still exists, in its model (``confirm``), before skipping it.

Rules:
- the ``fileId`` (never the URL) is journaled as a fresh upload (``UploadStarted``; "" for the
  REST upload, whose blob the server names in its answer), each new one voiding what the
  journal held; the URL stays in memory;
- a rerun resumes: the journal key is per server, project, model and file (``speckle_key``); a
  journaled part of the same ``fileId`` is not sent again (the blob is already stored) and is
  aimed at the model this run resolved (``ModelChosen``); a journaled start is finished by the
  API that was asked (``SpeckleApiChosen``), not sent again; a finished file is not touched at
  all (the engine's ``done``);
- a guess about the API that a document's validation contradicts is corrected where nothing
  ran: no ``additionalRequestHeaders`` → the v2 ``generateUploadUrl``; with ``api="auto"``, no
  ``generateUploadUrl`` → the REST upload and no ``startFileIngestion`` → ``startFileImport``
  for the same blob (a forced API is not stepped down from: its refusal says so);
- the current model of the journaled blob is the latest of ``UploadStarted.model_id`` and
  ``ModelChosen.model_id`` (``current_model``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final

import anyio.to_thread

from engine.errors import ConfigError, ConflictError, InvalidRequestError, NotFoundError
from engine.graphql import GraphQLClient, dig, need_str
from engine.journal import (
    FileState,
    JournalKey,
    Mark,
    ModelChosen,
    SpeckleApiChosen,
    UploadStarted,
    speckle_key,
)
from engine.models import FileInfo, PartLimits, PartRequest, PartResult, PartSpec, Remote
from engine.providers.speckle.documents import (
    CREATE_MODEL,
    GENERATE_UPLOAD_URL,
    GENERATE_UPLOAD_URL_V2,
    MAX_UPLOAD_SIZE,
    MODEL_BY_ID,
    MODEL_BY_NAME,
    MODEL_SEARCH,
    PLATFORM,
    PROJECT_VERSION,
)
from engine.providers.speckle.errors import (
    check_local,
    check_server_limit,
    classify,
    is_unsupported,
)
from engine.providers.speckle.ingestion import Blob, Flow, Ingestion, IngestionFlow
from engine.providers.speckle.legacy import FileImportFlow, RestFlow
from engine.providers.speckle.results import SpeckleVersion
from engine.providers.speckle.server import PacedGraphQL, SpeckleSession
from engine.target import CONFIRMED, Confirmation, Target, TargetContext

if TYPE_CHECKING:
    from engine.providers.speckle.provider import Speckle

__all__ = ["ModelRef", "SpeckleFileTarget", "current_model", "single_put_limits"]

#: Codes with which a server says a model is absent (speckle-server
#: ``core/graph/resolvers/models.ts``: ``BranchNotFoundError``; the file-import mutations:
#: ``ModelNotFoundError``; ``shared/errors``: ``NotFoundError``).
_ABSENT: Final = frozenset({"BRANCH_NOT_FOUND", "MODEL_NOT_FOUND", "NOT_FOUND_ERROR", "NOT_FOUND"})


@dataclass(frozen=True, slots=True)
class _Upload:
    """The presigned upload in hand. The URL stays in memory ("" when resuming from the journal;
    the ``file_id`` is "" for the REST upload until its answer)."""

    file_id: str
    url: str = ""
    headers: tuple[tuple[str, str], ...] = ()


def current_model(state: FileState) -> str:
    """The model the journaled blob goes to, or "": the latest of ``UploadStarted.model_id``
    and ``ModelChosen.model_id`` (a fresh ``UploadStarted`` voids every earlier ``ModelChosen``,
    so a ``ModelChosen`` in the state is the later one)."""
    chosen = state.get(ModelChosen)
    if chosen is not None:
        return chosen.model_id
    started = state.get(UploadStarted)
    return started.model_id if started is not None else ""


def single_put_limits(size_limit: int | None) -> PartLimits:
    """The whole file in one PUT, of at most 5 GiB (and ``size_limit`` bytes, when given)."""
    cap = MAX_UPLOAD_SIZE if size_limit is None else min(MAX_UPLOAD_SIZE, size_limit)
    return PartLimits(min_size=0, max_size=cap, max_parts=1, single=True)


def upload_headers(answer: object) -> tuple[tuple[str, str], ...]:
    """The PUT's headers: ``Content-Type``, then ``additionalRequestHeaders`` (the server's word
    wins, ``Content-Type`` too; names compare case-insensitively)."""
    headers = {"content-type": ("Content-Type", "application/octet-stream")}
    for h in dig(answer, "additionalRequestHeaders") or ():
        name, value = dig(h, "header"), dig(h, "value")
        if isinstance(name, str) and name and isinstance(value, str):
            headers[name.lower()] = (name, value)
    return tuple(headers.values())


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Which model a file goes to: the one with ``id``, the one called ``name`` (created if
    needed), or, with neither, the one named after the file's stem."""

    name: str | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        if self.name is not None and self.id is not None:
            raise ConfigError("give model_name or model_id, not both")
        if self.name is not None and not self.name.strip():
            raise ConfigError("model_name must not be empty")
        if self.id is not None and not self.id:
            raise ConfigError("model_id must not be empty")
        if self.name is not None:
            object.__setattr__(self, "name", self.name.strip())

    def name_for(self, path: Path) -> str:
        """The model name to look up for ``path`` (when no ``id`` is given)."""
        return self.name or path.stem

    def key_for(self, path: Path) -> str:
        """The model's part of the journal key: ``id=...`` or ``name=...``."""
        return f"id={self.id}" if self.id is not None else f"name={self.name_for(path)}"


class SpeckleFileTarget(Target):
    """One file into one Speckle model (see the module rules).

    Build it with ``Speckle.target(...)``; one instance uploads one file. ``calls`` lists the
    GraphQL operations it sent, in order (retries included). ``ingestion_type`` is the
    ``Ingestion`` it drives (a test may put a subclass in its place); ``api`` the API it used.
    """

    kind = "speckle"
    remote_type = SpeckleVersion
    ingestion_type: ClassVar[type[Ingestion]] = Ingestion

    def __init__(self, speckle: Speckle, *, project_id: str, model: ModelRef | None = None) -> None:
        if not project_id:
            raise ConfigError("project_id is required")
        self._speckle = speckle
        self.project_id = project_id
        self.model = model or ModelRef()
        self._gql: GraphQLClient | None = None
        self._path: Path | None = None
        self._upload: _Upload | None = None
        self.model_id = ""
        self.model_name = ""
        self.api = ""

    def __repr__(self) -> str:
        file_id = self._upload.file_id if self._upload else "?"
        return (
            f"<SpeckleFileTarget project={self.project_id} model={self.model_id or '?'} "
            f"file={file_id or '?'} api={self.api or '?'} calls={len(self.calls)}>"
        )

    @property
    def calls(self) -> list[str]:
        """GraphQL operation names in the order they were sent (retries included)."""
        return self._gql.calls if self._gql is not None else []

    def journal_key(self, file: FileInfo) -> JournalKey:
        ref = self.model.key_for(file.path)
        return speckle_key(self._speckle.server, self.project_id, ref, file)

    def _session(self, ctx: TargetContext) -> SpeckleSession:
        return self._speckle.session(ctx.services)

    def _client(self, ctx: TargetContext) -> GraphQLClient:
        if self._gql is None:
            s = self._speckle
            self._gql = PacedGraphQL(
                ctx.http,
                s.endpoint,
                headers=s.credentials.headers(),
                classify=classify,
                policy=replace(ctx.services.retry, retry_after_cap=s.retry_after_cap),
                clock=ctx.services.clock,
                pacer=self._session(ctx).pacer,
            )
        return self._gql

    # ---- Target ----------------------------------------------------------------------------------

    async def confirm(self, remote: Remote, ctx: TargetContext) -> Confirmation:
        """The server still has the version the journal says this file made, in its model."""
        assert isinstance(remote, SpeckleVersion)
        where = f"version {remote.version_id} of project {remote.project_id}"
        variables = {"projectId": remote.project_id, "versionId": remote.version_id}
        try:
            data = await self._client(ctx).execute(PROJECT_VERSION, variables)
        except NotFoundError:
            return Confirmation(False, f"the server has no {where}")
        model_id = dig(data, "project", "version", "model", "id")
        if model_id != remote.model_id:
            return Confirmation(False, f"{where} is not in model {remote.model_id}")
        return CONFIRMED

    async def prepare(self, ctx: TargetContext) -> PartLimits:
        path = ctx.file.path
        if self._path is not None and self._path != path:
            raise ConfigError("a SpeckleFileTarget uploads one file; build one per file")
        self._path = path
        limit = self._speckle.size_limit
        await anyio.to_thread.run_sync(check_local, path, ctx.file.size, limit)
        server = await self._session(ctx).api(self._client(ctx), self._speckle.api)
        check_server_limit(path, ctx.file.size, server.blob_limit)
        st = ctx.journal.state
        started, model_id = st.get(UploadStarted), current_model(st)
        if started is not None and model_id and Mark.INGESTION_REQUESTED in st.marks:
            # An earlier run asked for the ingestion: finish that one, send no bytes.
            chosen = st.get(SpeckleApiChosen)
            self.api = chosen.api if chosen is not None else "v3"
            self.model_id, self._upload = model_id, _Upload(started.file_id)
            ctx.phase("resuming: ingestion already requested")
            return single_put_limits(limit)
        self.model_id, self.model_name = await self._resolve_model(ctx)
        self.api = server.api
        if self.api != "rest" and started is not None and started.file_id and st.parts:
            # The bytes are stored under this fileId already: keep it, aim it at the model.
            self._upload = _Upload(started.file_id)
            if model_id != self.model_id:
                ctx.journal.record(ModelChosen(model_id=self.model_id))
            ctx.phase("resuming: file already uploaded")
        elif self.api != "rest":
            await self._new_upload(ctx)
        if self.api == "rest":  # the POST is the upload; its blob id comes with its answer
            self._upload = _Upload("")
            ctx.journal.record(
                UploadStarted(project_id=self.project_id, model_id=self.model_id, file_id="")
            )
        return single_put_limits(limit)

    async def stored_parts(
        self, plan: Sequence[PartSpec], ctx: TargetContext
    ) -> dict[int, PartResult]:
        if self.api == "rest":  # nothing for the engine to PUT: complete() posts the file
            return {p.number: PartResult(p.number, "", p.size) for p in plan}
        started = ctx.journal.state.get(UploadStarted)
        if self._upload is None or started is None or started.file_id != self._upload.file_id:
            return {}
        return await super().stored_parts(plan, ctx)

    async def part_request(
        self, part: PartSpec, ctx: TargetContext, *, refresh: bool
    ) -> PartRequest:
        if refresh or self._upload is None or not self._upload.url:
            await self._new_upload(ctx)
        assert self._upload is not None
        return PartRequest(self._upload.url, "PUT", self._upload.headers)

    async def complete(self, parts: Sequence[PartResult], ctx: TargetContext) -> SpeckleVersion:
        if len(parts) != 1 or self._upload is None:
            raise ConfigError(f"a Speckle upload is exactly one part, got {len(parts)}")
        blob = Blob(self.project_id, self.model_id, self._upload.file_id)
        etag = parts[0].etag
        ingestion = self._ingestion(ctx, blob, self.api)
        try:
            ingestion_id, version_id = await ingestion.run(etag)
        except InvalidRequestError as exc:
            session = self._session(ctx)
            if self.api != "v3" or not is_unsupported(exc):
                raise
            if self._speckle.api != "auto":
                raise InvalidRequestError(
                    f"{exc}; this server has no v3 ingestion API: use --speckle-api auto",
                    code=exc.code,
                ) from None
            # No startFileIngestion in this schema (nothing ran): the v2 import, same blob.
            session.learned(api="v2", live=False)
            self.api = "v2"
            ingestion = self._ingestion(ctx, blob, "v2")
            ingestion_id = await ingestion.start(etag)
            version_id = await ingestion.wait_version(ingestion_id)
        return blob.version(ingestion_id, version_id)

    def _ingestion(self, ctx: TargetContext, blob: Blob, api: str) -> Ingestion:
        s, session = self._speckle, self._session(ctx)
        gql = self._client(ctx)
        flow: Flow
        if api == "rest":
            name = self.model_name or self.model.name_for(ctx.file.path)
            flow = RestFlow(
                gql,
                ctx,
                blob,
                session,
                model_name=name,
                server_url=s.server,
                credentials=s.credentials,
                policy=replace(ctx.services.retry, retry_after_cap=s.retry_after_cap),
            )
        elif api == "v2":
            flow = FileImportFlow(gql, ctx, blob, session)
        else:
            flow = IngestionFlow(gql, ctx, blob, session)
        return self.ingestion_type(flow, session, s.poll_interval, s.ingestion_deadline)

    # ---- the model -------------------------------------------------------------------------------

    async def _resolve_model(self, ctx: TargetContext) -> tuple[str, str]:
        """(id, name) of the file's model, created when it is asked for by a name it lacks."""
        gql = self._client(ctx)
        if self.model.id is not None:
            data = await gql.execute(
                MODEL_BY_ID, {"projectId": self.project_id, "modelId": self.model.id}
            )
            model = dig(data, "project", "model")
            model_id = need_str(dig(model, "id"), "ProjectModel", PLATFORM, "model id")
            return model_id, str(dig(model, "name") or "")
        name = self.model.name_for(ctx.file.path)
        found = await self._model_by_name(gql, name)
        if found is not None:
            ctx.phase(f"model {name!r} exists ({found[0]})")
            return found
        try:
            data = await gql.execute(
                CREATE_MODEL, {"input": {"projectId": self.project_id, "name": name}}
            )
        except ConflictError:
            # Taken: meanwhile (by another run, or by our own create whose answer was lost), or
            # by a model whose name differs only in case, which modelByName does not find.
            found = await self._model_by_name(gql, name) or await self._model_like(gql, name)
            if found is not None:
                ctx.phase(f"model {found[1]!r} exists ({found[0]})")
                return found
            raise
        created = dig(data, "modelMutations", "create")
        model_id = need_str(dig(created, "id"), "CreateModel", PLATFORM, "model id")
        ctx.phase(f"model {name!r} created ({model_id})")
        return model_id, str(dig(created, "name") or name)

    async def _model_by_name(self, gql: GraphQLClient, name: str) -> tuple[str, str] | None:
        """(id, name) of the model called ``name`` (case-insensitively), ``None`` if absent."""
        try:
            data = await gql.execute(MODEL_BY_NAME, {"projectId": self.project_id, "name": name})
        except NotFoundError as exc:
            if exc.code in _ABSENT:
                return None
            raise
        model = dig(data, "project", "modelByName")
        model_id = need_str(dig(model, "id"), "ProjectModelByName", PLATFORM, "model id")
        return model_id, str(dig(model, "name") or name)

    async def _model_like(self, gql: GraphQLClient, name: str) -> tuple[str, str] | None:
        """(id, name) of the model whose name is ``name`` but for case, ``None`` if none."""
        variables = {"projectId": self.project_id, "search": name}
        data = await gql.execute(MODEL_SEARCH, variables)
        for model in dig(data, "project", "models", "items") or ():
            if str(dig(model, "name") or "").lower() == name.lower() and dig(model, "id"):
                return str(dig(model, "id")), str(dig(model, "name"))
        return None

    # ---- the upload ------------------------------------------------------------------------------

    async def _new_upload(self, ctx: TargetContext) -> None:
        """Ask for a presigned URL; its new fileId voids whatever the journal held. A server
        without ``generateUploadUrl`` turns the file over to the REST upload (``api``)."""
        session = self._session(ctx)
        server = session.server
        variables = {"input": {"projectId": self.project_id, "fileName": ctx.file.path.name}}
        document = GENERATE_UPLOAD_URL if server.headers else GENERATE_UPLOAD_URL_V2
        try:
            data = await self._client(ctx).execute(document, variables)
        except InvalidRequestError as exc:
            if not is_unsupported(exc):
                raise
            if document is GENERATE_UPLOAD_URL:  # no additionalRequestHeaders here
                session.learned(headers=False)
                return await self._new_upload(ctx)
            if self._speckle.api != "auto":
                raise InvalidRequestError(
                    f"{exc}; this server has no presigned uploads: use --speckle-api auto",
                    code=exc.code,
                ) from None
            session.learned(api="rest", live=False)  # no presigned upload at all
            self.api = "rest"
            return
        out = dig(data, "fileUploadMutations", "generateUploadUrl")
        op = "GenerateFileUploadUrl"
        url = need_str(dig(out, "url"), op, PLATFORM, "upload url")
        file_id = need_str(dig(out, "fileId"), op, PLATFORM, "fileId")
        self._upload = _Upload(file_id, url, upload_headers(out))
        ctx.journal.record(
            UploadStarted(project_id=self.project_id, model_id=self.model_id, file_id=file_id)
        )
