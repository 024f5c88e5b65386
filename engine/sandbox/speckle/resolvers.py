"""The Speckle plane's read resolvers and ``modelMutations``: projects, models, versions, uploads.

Rules this module keeps, each one the real server's unless marked (``packages/server``):

* **Access** (``Query.project`` in ``modules/core/graph/resolvers/projects.ts``, the policies of
  ``packages/shared/src/authz``, mapped by ``mapAuthToServerError``): a project that does not
  exist → ``STREAM_NOT_FOUND`` "Project not found"; one the token may not use → ``FORBIDDEN``
  "You do not have access to the project"; without any token → ``FORBIDDEN`` "You are not logged
  in to this server" (``ServerNoSessionError``). The same rule guards reads and writes. A mutation
  group without a token → ``UNAUTHORIZED`` "Must provide an auth token" (``@hasServerRole``).
* **Not found** (``modules/core/graph/resolvers/models.ts``, ``versions.ts``): an unknown
  ``project.model(id)`` or ``project.modelByName(name)`` → ``BRANCH_NOT_FOUND`` "Model not
  found"; an unknown version → ``COMMIT_NOT_FOUND`` "Version not found"; ``project.ingestion``
  of an unknown id → null (the field is nullable).
* **modelByName** goes through a dataloader keyed by the stored name, which is lower case
  (``createBranchFactory``): only the exact stored name finds the model (``Tower`` does not
  find ``tower``).
* **Models** (``ModelMutations.create``): the name is sanitized
  (:func:`.records.sanitize_model_name`); a name already taken case-insensitively →
  ``BRANCH_CREATE_ERROR`` "A branch with this name already exists"; then it is stored lower-cased
  and checked (``BRANCH_NAME_ERROR``).
  ``models`` lists the most recently updated first, ``versions`` the newest first.
* **File uploads** (v2, ``modules/fileuploads/graph/resolvers/fileUploads.ts``,
  ``repositories/fileUploads.ts``): ``Model.uploads`` lists a model's uploads, last updated first,
  at most 100 a page; ``pendingImportedVersions`` those queued or converting from the last day;
  ``pendingImportedModels`` those whose model does not exist (none: every upload has one).
* **Model.ingestionHistory** (v3): the model's ingestions, newest first, paged (sandbox rule: no
  public source shows this field; see the README).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

from engine.sandbox.blobstore import MiB
from engine.sandbox.speckle.errors import (
    BRANCH_CREATE_ERROR,
    BRANCH_NOT_FOUND,
    COMMIT_NOT_FOUND,
    FORBIDDEN,
    STREAM_NOT_FOUND,
    UNAUTHORIZED,
    SpeckleApiError,
)
from engine.sandbox.speckle.ingestion import file_upload_view, ingestion_view
from engine.sandbox.speckle.records import (
    Info,
    IngestionRecord,
    check_model_name,
    sanitize_model_name,
)
from engine.sandbox.speckle.schema import Resolver
from engine.sandbox.speckle.state import SpeckleState
from engine.sandbox.speckle.views import model_view, page, version_view

__all__ = ["SpeckleResolvers"]

Input: TypeAlias = Mapping[str, Any]
"""A mutation's ``input`` argument."""

_R = TypeVar("_R", bound="_InProject")
_MAX_PENDING_AGE = 24 * 3600.0  # getPendingUploadsBaseQueryFactory: uploads of the last day


class _InProject(Protocol):
    @property
    def project_id(self) -> str: ...


def _find(records: Mapping[str, _R], id: str, parent: Mapping[str, Any]) -> _R | None:
    """``records[id]`` if it is there and in the ``parent`` project."""
    record = records.get(id)
    return record if record is not None and record.project_id == parent["id"] else None


def _in_project(
    records: Mapping[str, _R], id: str, parent: Mapping[str, Any], code: str, message: str
) -> _R:
    """``records[id]`` if it is there and in the ``parent`` project, else ``SpeckleApiError``."""
    record = _find(records, id, parent)
    if record is None:
        raise SpeckleApiError(code, message)
    return record


@dataclass(frozen=True, slots=True)
class _Group:
    """A mutation group (``fileUploadMutations``…): what its fields resolve against."""

    name: str


class SpeckleResolvers(SpeckleState):
    """The read resolvers and ``modelMutations`` over the plane's state."""

    def _resolvers(self) -> dict[str, dict[str, Resolver]]:
        """Type name → field name → resolver, for every field the plane resolves."""
        return {
            "Query": {
                "project": self._query_project,
                "serverInfo": self._server_info,
                "stream": self._query_stream,
            },
            "Mutation": {
                "fileUploadMutations": self._mutation_group,
                "modelMutations": self._mutation_group,
            },
            "ModelMutations": {"create": self._create_model},
            "Project": {
                "model": self._project_model,
                "modelByName": self._project_model_by_name,
                "models": self._project_models,
                "version": self._project_version,
                "ingestion": self._project_ingestion,
                "pendingImportedModels": lambda *_a, **_k: [],
            },
            "Model": {
                "version": self._model_version,
                "versions": self._model_versions,
                "latestIngestion": self._model_latest_ingestion,
                "ingestionHistory": self._model_ingestion_history,
                "uploads": self._model_uploads,
                "pendingImportedVersions": self._model_pending_uploads,
            },
            "Version": {"model": self._version_model},
            "Stream": {
                "fileUploads": self._stream_file_uploads,
                "fileUpload": self._stream_file_upload,
            },
        }

    # ---- access ----------------------------------------------------------------------------------

    def _authorize(self, info: Info, project_id: str) -> dict[str, Any]:
        project = self._projects.get(project_id)
        if project is None:
            raise SpeckleApiError(STREAM_NOT_FOUND, "Project not found")
        if info.context.anonymous:
            raise SpeckleApiError(FORBIDDEN, "You are not logged in to this server")
        if project_id not in info.context.projects:
            raise SpeckleApiError(FORBIDDEN, "You do not have access to the project")
        return project

    def _project_of(self, info: Info, input: Input) -> str:
        """A mutation's ``input.projectId``, once the caller may use that project."""
        project_id = str(input["projectId"])
        self._authorize(info, project_id)
        return project_id

    def _mutation_group(self, _parent: Any, info: Info) -> _Group:
        if info.context.anonymous:
            raise SpeckleApiError(UNAUTHORIZED, "Must provide an auth token")
        return _Group(info.field_name)

    # ---- Query -----------------------------------------------------------------------------------

    def _query_project(self, _parent: Any, info: Info, id: str) -> dict[str, Any]:
        self._calls["project"] += 1
        return self._authorize(info, id)

    def _query_stream(self, _parent: Any, info: Info, id: str) -> dict[str, Any]:
        self._calls["stream"] += 1
        return self._authorize(info, id)

    def _server_info(self, _parent: Any, _info: Info) -> dict[str, Any]:
        """``serverInfo`` (core/graph/resolvers/server.ts, blobstorage/graph/resolvers): the
        limits are envHelper's defaults (``MAX_OBJECT_SIZE_MB``, ``MAX_OBJECT_UPLOAD_FILE_SIZE_MB``
        100) but the blob limit, which is ``size_limit``."""
        self._calls["serverInfo"] += 1
        limit = self.config.size_limit
        return {
            "name": "Speckle sandbox",
            "company": None,
            "description": "upload-engine's local stand-in for a Speckle server",
            "adminContact": None,
            "canonicalUrl": None,
            "version": self.config.version,
            "blobSizeLimitBytes": limit,
            "configuration": {
                "objectSizeLimitBytes": 100 * MiB,
                "objectMultipartUploadSizeLimitBytes": 100 * MiB,
                "blobSizeLimitBytes": limit,
            },
        }

    # ---- Project fields --------------------------------------------------------------------------

    def _project_model(self, parent: Mapping[str, Any], _info: Info, id: str) -> dict[str, Any]:
        self._calls["project.model"] += 1
        model = _in_project(self._models, id, parent, BRANCH_NOT_FOUND, "Model not found")
        return model_view(model)

    def _project_model_by_name(
        self, parent: Mapping[str, Any], _info: Info, name: str
    ) -> dict[str, Any]:
        self._calls["project.modelByName"] += 1
        for model in self._models.values():
            if model.project_id == parent["id"] and model.name == name:
                return model_view(model)
        raise SpeckleApiError(BRANCH_NOT_FOUND, "Model not found")

    def _project_models(
        self,
        parent: Mapping[str, Any],
        _info: Info,
        limit: int,
        cursor: str | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        self._calls["project.models"] += 1
        wanted = filter or {}
        search = (wanted.get("search") or "").strip().lower()
        ids = wanted.get("ids")
        exclude = set(wanted.get("excludeIds") or ())
        with_versions = {v.model_id for v in self._versions.values()}
        items = [
            m
            for m in self._models.values()
            if m.project_id == parent["id"]
            and (not search or search in m.name.lower())
            and (ids is None or m.id in ids)
            and m.id not in exclude
            and (not wanted.get("onlyWithVersions") or m.id in with_versions)
        ]
        items.sort(key=lambda m: m.order, reverse=True)
        return page(items, limit, cursor, model_view)

    def _project_version(self, parent: Mapping[str, Any], _info: Info, id: str) -> dict[str, Any]:
        self._calls["project.version"] += 1
        version = _in_project(self._versions, id, parent, COMMIT_NOT_FOUND, "Version not found")
        return version_view(version)

    def _project_ingestion(
        self, parent: Mapping[str, Any], _info: Info, id: str
    ) -> dict[str, Any] | None:
        self._calls["project.ingestion"] += 1
        ingestion = _find(self._ingestions, id, parent)
        if ingestion is None or ingestion.kind != "ingestion":
            return None
        return ingestion_view(ingestion)

    # ---- Model and Version fields ----------------------------------------------------------------

    def _model_version(self, parent: Mapping[str, Any], _info: Info, id: str) -> dict[str, Any]:
        version = self._versions.get(id)
        if version is None or version.model_id != parent["id"]:
            raise SpeckleApiError(COMMIT_NOT_FOUND, "Version not found")
        return version_view(version)

    def _model_versions(
        self, parent: Mapping[str, Any], _info: Info, limit: int, cursor: str | None = None
    ) -> dict[str, Any]:
        items = [v for v in self._versions.values() if v.model_id == parent["id"]]
        items.reverse()  # newest first
        return page(items, limit, cursor, version_view)

    def _of_model(self, model_id: str, kind: str) -> list[IngestionRecord]:
        """The model's ingestions (or uploads), newest first."""
        found = [r for r in self._ingestions.values() if r.model_id == model_id and r.kind == kind]
        found.reverse()
        return found

    def _model_latest_ingestion(
        self, parent: Mapping[str, Any], _info: Info
    ) -> dict[str, Any] | None:
        found = self._of_model(parent["id"], "ingestion")
        return ingestion_view(found[0]) if found else None

    def _model_ingestion_history(
        self, parent: Mapping[str, Any], _info: Info, limit: int, cursor: str | None = None
    ) -> dict[str, Any]:
        self._calls["model.ingestionHistory"] += 1
        return page(self._of_model(parent["id"], "ingestion"), limit, cursor, ingestion_view)

    async def _upload_views(self, records: list[IngestionRecord]) -> list[dict[str, Any]]:
        return [
            file_upload_view(r, await self._status(r), self._models[r.model_id]) for r in records
        ]

    async def _model_uploads(
        self, parent: Mapping[str, Any], _info: Info, input: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        self._calls["model.uploads"] += 1
        wanted = input or {}
        views = await self._upload_views(self._of_model(parent["id"], "upload"))
        views.sort(key=lambda v: (v["convertedLastUpdate"], v["id"]), reverse=True)
        limit = wanted.get("limit")
        return page(views, 25 if limit is None else limit, wanted.get("cursor"), dict)

    async def _model_pending_uploads(
        self, parent: Mapping[str, Any], _info: Info, limit: int | None = 25
    ) -> list[dict[str, Any]]:
        self._calls["model.pendingImportedVersions"] += 1
        recent = [
            r
            for r in self._of_model(parent["id"], "upload")
            if self._clock() - r.started <= _MAX_PENDING_AGE
        ]
        views = [v for v in await self._upload_views(recent) if v["convertedStatus"] in (0, 1)]
        return views[:limit] if limit else views

    def _version_model(self, parent: Mapping[str, Any], _info: Info) -> Any:
        return model_view(self._models[parent["modelId"]])

    # ---- Stream fields (v2, legacy) --------------------------------------------------------------

    async def _stream_file_uploads(
        self, parent: Mapping[str, Any], _info: Info
    ) -> list[dict[str, Any]]:
        records = [
            r
            for r in self._ingestions.values()
            if r.project_id == parent["id"] and r.kind == "upload"
        ]
        return await self._upload_views(records)

    async def _stream_file_upload(
        self, parent: Mapping[str, Any], _info: Info, id: str
    ) -> dict[str, Any] | None:
        self._calls["stream.fileUpload"] += 1
        record = _find(self._ingestions, id, parent)
        if record is None or record.kind != "upload":
            return None
        return (await self._upload_views([record]))[0]

    # ---- ModelMutations.create -------------------------------------------------------------------

    def _create_model(self, _parent: Any, info: Info, input: Input) -> dict[str, Any]:
        self._calls["modelMutations.create"] += 1
        project_id = self._project_of(info, input)
        name = sanitize_model_name(str(input["name"]))
        if name and self.model_by_name(project_id, name) is not None:
            raise SpeckleApiError(BRANCH_CREATE_ERROR, "A branch with this name already exists")
        name = name.lower()
        check_model_name(name)
        return model_view(self._add_model(project_id, name, input.get("description")))
