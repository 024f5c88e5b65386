"""One file into one Speckle model: the ``Target`` the engine drives.

The flow (``POST {server}/graphql``, ``Authorization: Bearer <token>``), per file:

1. ``prepare``: the local checks (``errors.check_local``); the model: ``model_id`` is checked
   with ``project.model(id)`` (``NotFoundError``); a name (default: the file's stem) is looked up
   with ``project.modelByName`` and created with ``modelMutations.create`` when the server
   answers ``MODEL_NOT_FOUND``; then ``fileUploadMutations.generateUploadUrl(projectId,
   fileName)`` → ``url``, ``fileId`` and ``additionalRequestHeaders``;
2. one part: one PUT of the whole file with every additional header and
   ``Content-Type: application/octet-stream``; an expired URL gets a new ``generateUploadUrl``
   (a new ``fileId``);
3. ``complete``: the ingestion (``ingestion.Ingestion``), then the ``SpeckleVersion``.

Rules:
- the ``fileId`` (never the URL) is journaled as a fresh upload (``UploadStarted``), each new
  one voiding what the journal held; the URL stays in memory;
- a rerun resumes: the journal key is per server, project, model and file (``speckle_key``); a
  journaled part of the same ``fileId`` is not sent again (the blob is already stored) and is
  aimed at the model this run resolved (``ModelChosen``); a journaled ingestion request is
  finished, not sent again; a finished file is not touched at all (the engine's ``done``);
- the current model of the journaled blob is the latest of ``UploadStarted.model_id`` and
  ``ModelChosen.model_id`` (``current_model``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import anyio.to_thread

from engine.errors import ConfigError, ConflictError, NotFoundError
from engine.graphql import GraphQLClient, dig, need_str
from engine.journal import (
    FileState,
    JournalKey,
    Mark,
    ModelChosen,
    UploadStarted,
    speckle_key,
)
from engine.models import FileInfo, PartLimits, PartRequest, PartResult, PartSpec
from engine.providers.speckle.documents import (
    CREATE_MODEL,
    GENERATE_UPLOAD_URL,
    MAX_UPLOAD_SIZE,
    MODEL_BY_ID,
    MODEL_BY_NAME,
    PLATFORM,
)
from engine.providers.speckle.errors import check_local, classify
from engine.providers.speckle.ingestion import Blob, Ingestion
from engine.providers.speckle.results import SpeckleVersion
from engine.target import Target, TargetContext

if TYPE_CHECKING:
    from engine.providers.speckle.provider import Speckle

__all__ = ["ModelRef", "SpeckleFileTarget", "current_model", "single_put_limits"]


@dataclass(frozen=True, slots=True)
class _Upload:
    """The presigned upload in hand. The URL stays in memory ("" when resuming from the journal)."""

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
    ``Ingestion`` it drives (a test may put a subclass in its place).
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

    def journal_key(self, file: FileInfo) -> JournalKey:
        ref = self.model.key_for(file.path)
        return speckle_key(self._speckle.server, self.project_id, ref, file)

    def _client(self, ctx: TargetContext) -> GraphQLClient:
        if self._gql is None:
            s = self._speckle
            self._gql = GraphQLClient(
                ctx.http,
                s.endpoint,
                headers=s.credentials.headers(),
                classify=classify,
                policy=ctx.services.retry,
                clock=ctx.services.clock,
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
        st = ctx.journal.state
        started, model_id = st.get(UploadStarted), current_model(st)
        file_id = started.file_id if started is not None else ""
        if file_id and model_id and Mark.INGESTION_REQUESTED in st.marks:
            # An earlier run asked for the ingestion: finish that one, send no bytes.
            self.model_id, self._upload = model_id, _Upload(file_id)
            ctx.phase("resuming: ingestion already requested")
            return single_put_limits(limit)
        self.model_id = await self._resolve_model(ctx)
        if file_id and st.parts:
            # The bytes are stored under this fileId already: keep it, aim it at the model.
            self._upload = _Upload(file_id)
            if model_id != self.model_id:
                ctx.journal.record(ModelChosen(model_id=self.model_id))
            ctx.phase("resuming: file already uploaded")
        else:
            await self._new_upload(ctx)
        return single_put_limits(limit)

    async def stored_parts(
        self, plan: Sequence[PartSpec], ctx: TargetContext
    ) -> dict[int, PartResult]:
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
        s, blob = self._speckle, Blob(self.project_id, self.model_id, self._upload.file_id)
        ingestion = self.ingestion_type(
            self._client(ctx), ctx, blob, s.poll_interval, s.ingestion_deadline
        )
        ingestion_id, version_id = await ingestion.run(parts[0].etag)
        return blob.version(ingestion_id, version_id)

    # ---- the model -------------------------------------------------------------------------------

    async def _resolve_model(self, ctx: TargetContext) -> str:
        gql = self._client(ctx)
        if self.model.id is not None:
            data = await gql.execute(
                MODEL_BY_ID, {"projectId": self.project_id, "modelId": self.model.id}
            )
            return need_str(
                dig(data, "project", "model", "id"), "ProjectModel", PLATFORM, "model id"
            )
        name = self.model.name_for(ctx.file.path)
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
        model_id = need_str(
            dig(data, "modelMutations", "create", "id"), "CreateModel", PLATFORM, "model id"
        )
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
        answer = dig(data, "project", "modelByName", "id")
        return need_str(answer, "ProjectModelByName", PLATFORM, "model id")

    # ---- the upload ------------------------------------------------------------------------------

    async def _new_upload(self, ctx: TargetContext) -> None:
        """Ask for a presigned URL; its new fileId voids whatever the journal held."""
        data = await self._client(ctx).execute(
            GENERATE_UPLOAD_URL,
            {"input": {"projectId": self.project_id, "fileName": ctx.file.path.name}},
        )
        out = dig(data, "fileUploadMutations", "generateUploadUrl")
        op = "GenerateFileUploadUrl"
        url = need_str(dig(out, "url"), op, PLATFORM, "upload url")
        file_id = need_str(dig(out, "fileId"), op, PLATFORM, "fileId")
        self._upload = _Upload(file_id, url, upload_headers(out))
        ctx.journal.record(
            UploadStarted(project_id=self.project_id, model_id=self.model_id, file_id=file_id)
        )
