"""The Speckle plane's resolvers: projects, models, versions and the file-upload mutations.

Rules this module keeps, each one the real server's unless marked:

* **Access.** A project not configured → ``STREAM_NOT_FOUND``; configured but not among the
  token's projects → ``FORBIDDEN``. The same rule guards reads and writes.
* **Ids** are 10 lowercase hex characters (``crypto-random-string``'s default, as the real
  server), drawn from ``secrets`` or, with ``seed``, from ``random.Random(seed)``; never reused.
* **generateUploadUrl** refuses a file name without an extension (``USER_INPUT_ERROR``), draws a
  ``fileId``, records the blob as *pending* and presigns one ``PUT`` of key
  ``speckle/<projectId>/<fileId>``. With ``additional_header`` configured, that header is returned
  in ``additionalRequestHeaders`` *and* signed into the URL, so the blob store refuses a PUT
  without it (403 ``SignatureDoesNotMatch``).
* **startFileIngestion** checks, in this order, each with its own error: ``etag`` not empty
  (``USER_INPUT_ERROR``); the blob was generated for this project (``USER_INPUT_ERROR``, "Please
  use mutation generateUploadUrl…"); the blob is still pending (``ALREADY_REGISTERED_BLOB_ERROR``:
  a second call for a fileId always fails, whether the first succeeded or failed on size); the
  object is stored (``STORED_BLOB_ACCESS_ERROR``); ``etag`` equals the stored ETag as raw
  strings, quotes included (``USER_INPUT_ERROR`` "ETag mismatch…"); ``0 < size <= size_limit``
  (``USER_INPUT_ERROR``, and the blob is marked failed for good). The blob is then registered;
  only after that is the model looked up (``MODEL_NOT_FOUND``), so a call with a wrong model
  consumes the blob, as on the real server. The mutation's own answer is always ``queued``.
* **Models.** Each configured project starts with the models in ``initial_models`` (the real
  server makes ``main``). Names follow :func:`.records.check_model_name` and are unique per
  project, case-insensitively (``BRANCH_CREATE_ERROR``). Find one by name with
  ``project.modelByName(name)`` or ``project.models(filter: {search})``; ``models`` lists the
  most recently updated first, ``versions`` the newest first.
"""

from __future__ import annotations

import random
import secrets
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any, Final, Protocol, TypeAlias, TypeVar

from engine.sandbox.blobstore import BlobStore
from engine.sandbox.speckle.config import SpeckleSandboxConfig
from engine.sandbox.speckle.errors import (
    ALREADY_REGISTERED_BLOB_ERROR,
    BRANCH_CREATE_ERROR,
    FORBIDDEN,
    MODEL_NOT_FOUND,
    NOT_FOUND,
    STORED_BLOB_ACCESS_ERROR,
    STREAM_NOT_FOUND,
    USER_INPUT_ERROR,
    SpeckleApiError,
)
from engine.sandbox.speckle.ingestion import ingestion_view, snapshot_for_phase
from engine.sandbox.speckle.records import (
    BlobRecord,
    Info,
    IngestionRecord,
    ModelRecord,
    VersionRecord,
    check_model_name,
    now,
)
from engine.sandbox.speckle.schema import Resolver
from engine.sandbox.speckle.views import model_view, page, version_view

__all__ = ["SpeckleResolvers"]

_ID_ALPHABET: Final = "0123456789abcdef"
Input: TypeAlias = Mapping[str, Any]
"""A mutation's ``input`` argument."""

_R = TypeVar("_R", bound="_InProject")


class _InProject(Protocol):
    @property
    def project_id(self) -> str: ...


def _in_project(
    records: Mapping[str, _R], id: str, parent: Mapping[str, Any], code: str, message: str
) -> _R:
    """``records[id]`` if it is there and in the ``parent`` project, else ``SpeckleApiError``."""
    record = records.get(id)
    if record is None or record.project_id != parent["id"]:
        raise SpeckleApiError(code, message)
    return record


class SpeckleResolvers:
    """The plane's state (projects, models, blobs, ingestions, versions) and its resolvers."""

    def __init__(
        self, config: SpeckleSandboxConfig, store: BlobStore, clock: Callable[[], float]
    ) -> None:
        self.config = config
        self.store = store
        self._clock = clock
        self._rng = random.Random(config.seed) if config.seed is not None else None
        self._order = 0
        self._projects: dict[str, dict[str, Any]] = {}
        self._models: dict[str, ModelRecord] = {}
        self._blobs: dict[str, BlobRecord] = {}
        self._ingestions: dict[str, IngestionRecord] = {}
        self._versions: dict[str, VersionRecord] = {}
        self._calls: Counter[str] = Counter()
        created = now()
        for project_id in sorted(config.projects):
            self._projects[project_id] = {
                "id": project_id,
                "name": project_id,
                "description": None,
                "createdAt": created,
                "updatedAt": created,
            }
            for name in config.initial_models:
                self._add_model(project_id, name.strip(), None)

    def _resolvers(self) -> dict[str, dict[str, Resolver]]:
        """Type name → field name → resolver, for every field this module resolves."""
        return {
            "Query": {"project": self._query_project},
            "Mutation": {
                "fileUploadMutations": lambda *_: {},
                "modelMutations": lambda *_: {},
            },
            "FileUploadMutations": {
                "generateUploadUrl": self._generate_upload_url,
                "startFileIngestion": self._start_file_ingestion,
            },
            "ModelMutations": {"create": self._create_model},
            "Project": {
                "model": self._project_model,
                "modelByName": self._project_model_by_name,
                "models": self._project_models,
                "version": self._project_version,
                "ingestion": self._project_ingestion,
            },
            "Model": {
                "version": self._model_version,
                "versions": self._model_versions,
                "latestIngestion": self._model_latest_ingestion,
            },
            "Version": {"model": self._version_model},
        }

    def model_by_name(self, project_id: str, name: str) -> ModelRecord | None:
        """The model of ``project_id`` called ``name`` (case-insensitively), if any."""
        wanted = name.strip().lower()
        for model in self._models.values():
            if model.project_id == project_id and model.name.lower() == wanted:
                return model
        return None

    # ---- access ----------------------------------------------------------------------------------

    def _authorize(self, info: Info, project_id: str) -> dict[str, Any]:
        project = self._projects.get(project_id)
        if project is None:
            raise SpeckleApiError(STREAM_NOT_FOUND, f"Project {project_id} not found")
        if project_id not in info.context.projects:
            raise SpeckleApiError(FORBIDDEN, "You do not have the required privileges.")
        return project

    def _project_of(self, info: Info, input: Input) -> str:
        """A mutation's ``input.projectId``, once the caller may use that project."""
        project_id = str(input["projectId"])
        self._authorize(info, project_id)
        return project_id

    def _new_id(self, taken: Collection[str]) -> str:
        while True:
            if self._rng is None:
                candidate = secrets.token_hex(5)
            else:
                candidate = "".join(self._rng.choice(_ID_ALPHABET) for _ in range(10))
            if candidate not in taken:
                return candidate

    # ---- Query.project and Project fields --------------------------------------------------------

    def _query_project(self, _parent: Any, info: Info, id: str) -> dict[str, Any]:
        self._calls["project"] += 1
        return self._authorize(info, id)

    def _project_model(self, parent: Mapping[str, Any], _info: Info, id: str) -> dict[str, Any]:
        self._calls["project.model"] += 1
        model = _in_project(self._models, id, parent, MODEL_NOT_FOUND, "Model not found")
        return model_view(model)

    def _project_model_by_name(
        self, parent: Mapping[str, Any], _info: Info, name: str
    ) -> dict[str, Any]:
        self._calls["project.modelByName"] += 1
        model = self.model_by_name(parent["id"], name)
        if model is None:
            raise SpeckleApiError(MODEL_NOT_FOUND, f"Model {name!r} not found")
        return model_view(model)

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
        version = _in_project(self._versions, id, parent, NOT_FOUND, "Version not found")
        return version_view(version)

    def _project_ingestion(self, parent: Mapping[str, Any], _info: Info, id: str) -> dict[str, Any]:
        self._calls["project.ingestion"] += 1
        message = f"Model ingestion {id} not found"
        ingestion = _in_project(self._ingestions, id, parent, NOT_FOUND, message)
        return ingestion_view(ingestion)

    # ---- Model and Version fields ----------------------------------------------------------------

    def _model_version(self, parent: Mapping[str, Any], _info: Info, id: str) -> dict[str, Any]:
        version = self._versions.get(id)
        if version is None or version.model_id != parent["id"]:
            raise SpeckleApiError(NOT_FOUND, "Version not found")
        return version_view(version)

    def _model_versions(
        self, parent: Mapping[str, Any], _info: Info, limit: int, cursor: str | None = None
    ) -> dict[str, Any]:
        items = [v for v in self._versions.values() if v.model_id == parent["id"]]
        items.reverse()  # newest first
        return page(items, limit, cursor, version_view)

    def _model_latest_ingestion(
        self, parent: Mapping[str, Any], _info: Info
    ) -> dict[str, Any] | None:
        latest = None
        for ingestion in self._ingestions.values():
            if ingestion.model_id == parent["id"]:
                latest = ingestion
        return None if latest is None else ingestion_view(latest)

    def _version_model(self, parent: Mapping[str, Any], _info: Info) -> Any:
        return model_view(self._models[parent["modelId"]])

    # ---- ModelMutations.create -------------------------------------------------------------------

    def _create_model(self, _parent: Any, info: Info, input: Input) -> dict[str, Any]:
        self._calls["modelMutations.create"] += 1
        project_id = self._project_of(info, input)
        name = str(input["name"]).strip()
        check_model_name(name)
        if self.model_by_name(project_id, name) is not None:
            raise SpeckleApiError(BRANCH_CREATE_ERROR, "A branch with this name already exists")
        return model_view(self._add_model(project_id, name, input.get("description")))

    def _add_model(self, project_id: str, name: str, description: str | None) -> ModelRecord:
        self._order += 1
        moment = now()
        model = ModelRecord(
            id=self._new_id(self._models),
            project_id=project_id,
            name=name,
            description=description,
            created_at=moment,
            updated_at=moment,
            order=self._order,
        )
        self._models[model.id] = model
        return model

    # ---- FileUploadMutations ---------------------------------------------------------------------

    def _generate_upload_url(self, _parent: Any, info: Info, input: Input) -> dict[str, Any]:
        self._calls["generateUploadUrl"] += 1
        project_id = self._project_of(info, input)
        file_name = str(input["fileName"])
        extension = file_name.rsplit(".", 1)[-1]
        if not extension or extension == file_name:
            raise SpeckleApiError(USER_INPUT_ERROR, "File name must have a valid extension")
        file_id = self._new_id(self._blobs)
        key = f"speckle/{project_id}/{file_id}"
        extra = self.config.additional_header
        url = self.store.presign_put(
            key,
            expires_in=self.config.url_expiry,
            required_headers=None if extra is None else {extra[0]: extra[1]},
        )
        self._blobs[file_id] = BlobRecord(
            file_id=file_id,
            project_id=project_id,
            file_name=file_name,
            key=key,
            created_at=now(),
        )
        headers = [] if extra is None else [{"header": extra[0], "value": extra[1]}]
        return {"url": url, "fileId": file_id, "additionalRequestHeaders": headers}

    def _start_file_ingestion(self, _parent: Any, info: Info, input: Input) -> dict[str, Any]:
        self._calls["startFileIngestion"] += 1
        project_id = self._project_of(info, input)
        file_id = str(input["fileId"])
        etag = str(input["etag"])
        blob = self._register_blob(project_id, file_id, etag)
        model_id = str(input["modelId"])
        model = self._models.get(model_id)
        if model is None or model.project_id != project_id:
            raise SpeckleApiError(MODEL_NOT_FOUND, "Attempting to work with a non-existant model")
        ingestion = IngestionRecord(
            id=self._new_id(self._ingestions),
            project_id=project_id,
            model_id=model_id,
            file_id=file_id,
            file_name=blob.file_name,
            started=self._clock(),
            created_at=now(),
            forced=self.config.forced_status_for(blob.file_name),
        )
        self._ingestions[ingestion.id] = ingestion
        view = ingestion_view(ingestion)
        queued = snapshot_for_phase(0, steps=self.config.processing_steps, file_name=blob.file_name)
        view["statusData"] = queued.to_graphql()
        return view

    def _register_blob(self, project_id: str, file_id: str, etag: str) -> BlobRecord:
        """Register the pending blob ``file_id`` as completed, once what is stored checks out;
        return it as it was (pending)."""
        if not etag:
            raise SpeckleApiError(
                USER_INPUT_ERROR, "ETag is required to register a completed upload"
            )
        blob = self._pending_blob(project_id, file_id)
        stored = self.store.head(blob.key)
        if stored is None:
            raise SpeckleApiError(
                STORED_BLOB_ACCESS_ERROR,
                f"Failed to get blob metadata for blob {file_id} in project {project_id}",
            )
        if stored.etag != etag:
            # Like the real server: the stored ETag is the proof of upload, never echoed.
            raise SpeckleApiError(USER_INPUT_ERROR, f"ETag mismatch: expected {etag}")
        if stored.size <= 0 or stored.size > self.config.size_limit:
            self._blobs[file_id] = replace(
                blob,
                status="error",
                upload_error="[FILE_SIZE_EXCEEDED] File size exceeds maximum allowed size for "
                "the project at the time of upload",
                size=stored.size,
                etag=stored.etag,
            )
            raise SpeckleApiError(
                USER_INPUT_ERROR,
                f"File size exceeds maximum allowed size of {self.config.size_limit} bytes. "
                f"Actual size: {stored.size} bytes",
            )
        self._blobs[file_id] = replace(
            blob, status="completed", size=stored.size, etag=stored.etag, md5=stored.md5
        )
        return blob

    def _pending_blob(self, project_id: str, file_id: str) -> BlobRecord:
        blob = self._blobs.get(file_id)
        if blob is None or blob.project_id != project_id:
            raise SpeckleApiError(
                USER_INPUT_ERROR,
                "Please use mutation generateUploadUrl to create a blob before registering a "
                "completed upload",
            )
        if blob.status == "completed":
            raise SpeckleApiError(
                ALREADY_REGISTERED_BLOB_ERROR, "Blob already registered and completed"
            )
        if blob.status == "error":
            raise SpeckleApiError(
                ALREADY_REGISTERED_BLOB_ERROR,
                blob.upload_error or "Blob already registered with an error",
            )
        return blob
