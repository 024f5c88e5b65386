"""The Speckle plane's ``fileUploadMutations``: generateUploadUrl, startFileIngestion/Import.

Rules this module keeps, each one the real server's unless marked (``packages/server``):

* **generateUploadUrl** (``modules/fileuploads/graph/resolvers/fileUploads.ts``,
  ``modules/blobstorage/services/presigned.ts`` ``generatePresignedUrlFactory``) refuses a file
  name without an extension (``USER_INPUT_ERROR`` "File name must have a valid extension"; the
  file-type check there is commented out, so any extension passes), draws a ``fileId``, records
  the blob as *pending* and presigns one ``PUT`` of key ``speckle/<projectId>/<fileId>``, valid
  ``url_expiry`` seconds. In v3, ``additional_header`` is returned in ``additionalRequestHeaders``
  *and* signed into the URL, so the blob store refuses a PUT without it. The presigned PUT puts
  no size limit on the body: the size is judged at completion.
* **Completion** (``registerCompletedUploadFactory``, then ``registerUploadCompleteAndStart
  FileImportFactory`` in ``modules/fileuploads/services/presigned.ts``) checks, in this order,
  each with its own error: ``etag`` not empty (``USER_INPUT_ERROR``); the blob was generated for
  this project (``USER_INPUT_ERROR``, "Please use mutation generateUploadUrl…"); the blob is still
  pending (``ALREADY_REGISTERED_BLOB_ERROR``: a second call for a fileId always fails, whether the
  first succeeded or failed); the object is stored (``STORED_BLOB_ACCESS_ERROR``); ``etag`` equals
  the stored ETag as raw strings, quotes included (``USER_INPUT_ERROR`` "ETag mismatch…");
  ``0 < size <= size_limit`` (``USER_INPUT_ERROR`` "File size exceeds maximum allowed size of N
  bytes. Actual size: M bytes", and the blob is marked failed for good with
  ``[FILE_SIZE_EXCEEDED] …``). The blob is then registered; only after that is the model looked
  up (``MODEL_NOT_FOUND``), and then the file type (``insertNewUploadAndNotifyFactoryV2`` in
  ``modules/fileuploads/services/management.ts``: ``UNSUPPORTED_FILE_TYPE`` "The provided file type
  is not supported for importing." when no importer queue takes the extension, see
  :mod:`.formats`). So a call with a wrong model or type consumes the blob, as on the real server.
* **startFileIngestion** (v3) answers the new ``ModelIngestion``, always ``queued``;
  **startFileImport** (v2) answers the new ``FileUpload`` (its id is the blob's), queued too. In v2
  the refused type still leaves its upload record (saved before the check); the sandbox ends it
  with ``convertedStatus`` 3 and the error's message (sandbox rule: on the server it stays queued).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engine.sandbox.speckle.errors import (
    ALREADY_REGISTERED_BLOB_ERROR,
    MODEL_NOT_FOUND,
    STORED_BLOB_ACCESS_ERROR,
    UNSUPPORTED_FILE_TYPE,
    USER_INPUT_ERROR,
    SpeckleApiError,
)
from engine.sandbox.speckle.formats import extension_of
from engine.sandbox.speckle.ingestion import file_upload_view, ingestion_view, snapshot_for_phase
from engine.sandbox.speckle.records import BlobRecord, Info, ModelRecord, Verdict, now
from engine.sandbox.speckle.resolvers import Input, SpeckleResolvers
from engine.sandbox.speckle.schema import Resolver

__all__ = ["UNSUPPORTED_MESSAGE", "FileUploadResolvers"]

UNSUPPORTED_MESSAGE = "The provided file type is not supported for importing."


class FileUploadResolvers(SpeckleResolvers):
    """``fileUploadMutations`` over the plane's state."""

    def _resolvers(self) -> dict[str, dict[str, Resolver]]:
        resolvers = super()._resolvers()
        resolvers["FileUploadMutations"] = {
            "generateUploadUrl": self._generate_upload_url,
            "startFileIngestion": self._start_file_ingestion,
            "startFileImport": self._start_file_import,
        }
        return resolvers

    def _generate_upload_url(self, _parent: Any, info: Info, input: Input) -> dict[str, Any]:
        self._calls["generateUploadUrl"] += 1
        project_id = self._project_of(info, input)
        file_name = str(input["fileName"])
        extension = file_name.rsplit(".", 1)[-1]
        if not extension or extension == file_name:
            raise SpeckleApiError(USER_INPUT_ERROR, "File name must have a valid extension")
        file_id = self._new_id(self._blobs)
        key = f"speckle/{project_id}/{file_id}"
        extra = self.config.additional_header if self.config.api == "v3" else None
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
            user_id=info.context.user_id or "",
        )
        headers = [] if extra is None else [{"header": extra[0], "value": extra[1]}]
        return {"url": url, "fileId": file_id, "additionalRequestHeaders": headers}

    def _start_file_ingestion(self, _parent: Any, info: Info, input: Input) -> dict[str, Any]:
        self._calls["startFileIngestion"] += 1
        blob, model = self._complete_upload(info, input)
        if not self._accepts(blob.file_name):
            raise SpeckleApiError(UNSUPPORTED_FILE_TYPE, UNSUPPORTED_MESSAGE)
        ingestion = self._start_record(blob, model.id)
        view = ingestion_view(ingestion)
        queued = snapshot_for_phase(0, steps=self.config.processing_steps, file_name=blob.file_name)
        view["statusData"] = queued.to_graphql()
        return view

    def _start_file_import(self, _parent: Any, info: Info, input: Input) -> dict[str, Any]:
        self._calls["startFileImport"] += 1
        blob, model = self._complete_upload(info, input)
        upload = self._start_record(blob, model.id, kind="upload")
        if not self._accepts(blob.file_name):
            self._settle(upload.id, Verdict("failed", UNSUPPORTED_MESSAGE))
            raise SpeckleApiError(UNSUPPORTED_FILE_TYPE, UNSUPPORTED_MESSAGE)
        queued = snapshot_for_phase(0, steps=self.config.processing_steps, file_name=blob.file_name)
        return file_upload_view(upload, queued, model)

    def _accepts(self, file_name: str) -> bool:
        return extension_of(file_name).lower() in self.config.accepted_extensions

    def _complete_upload(self, info: Info, input: Input) -> tuple[BlobRecord, ModelRecord]:
        """Register the completed upload, then find the model: the blob (registered) and model."""
        project_id = self._project_of(info, input)
        file_id = str(input["fileId"])
        blob = self._register_blob(project_id, file_id, str(input["etag"]))
        model = self._models.get(str(input["modelId"]))
        if model is None or model.project_id != project_id:
            raise SpeckleApiError(MODEL_NOT_FOUND, "Attempting to work with a non-existant model")
        return blob, model

    def _register_blob(self, project_id: str, file_id: str, etag: str) -> BlobRecord:
        """Register the pending blob ``file_id`` as completed, once what is stored checks out;
        return it registered."""
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
        registered = replace(
            blob, status="completed", size=stored.size, etag=stored.etag, md5=stored.md5
        )
        self._blobs[file_id] = registered
        return registered

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
