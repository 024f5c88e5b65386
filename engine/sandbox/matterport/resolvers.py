"""The Import API's operations: one resolver per root field, over the sessions and the store.

Rules this module keeps:

* **Identifiers.** ``importFileId`` arguments take the file's *clientId*, as the guide says.
  ``part`` and every ``partNumber`` this API returns are **zero-based**: part *i* is stored as
  S3 part *i + 1*. A file's bytes go to the store under ``import/<sessionId>/<fileId>``.
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
  which are also signed into the URL. importFilePartsUploadStatus lists stored parts: the blob
  store's while STARTED, the completed ones after; ``eTag`` quoted, as S3 lists them.
* **Listing.** listImportSessions is newest first; with ``modelId`` only that model's session.
* **completeUpload** checks the listed parts (:func:`.checks.check_completion`), then the blob
  store assembles the object; a refusal by the store is ``request.invalid`` (``error.internal``
  for a 5xx), and a completion already in progress answers ``error.internal`` (retry).
* **commitImportSession** answers at once, with ``files: []`` as in the guide's sample, and hands
  the assembled files to the E57 check (:class:`.checks.CheckRunner`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from engine.sandbox.blobstore import BlobError, BlobStore, StoredPart
from engine.sandbox.matterport.checks import CheckRunner, check_completion, etag_of, normalize_etag
from engine.sandbox.matterport.config import MatterportSandboxConfig
from engine.sandbox.matterport.errors import INTERNAL, INVALID, NOT_UNIQUE, UNAUTHORIZED, ApiError
from engine.sandbox.matterport.records import (
    Caller,
    E57ObjectRecord,
    FileCheck,
    ImportFileRecord,
    ImportSessionRecord,
)
from engine.sandbox.matterport.sessions import ALNUM_LOWER, SessionBook, now
from engine.sandbox.matterport.views import file_view, session_view

__all__ = ["Handler", "ImportResolvers"]

Handler = Callable[[dict[str, Any], Caller], Any]


class ImportResolvers(SessionBook):
    """The nine root fields of the Import API over one :class:`BlobStore`."""

    def __init__(self, config: MatterportSandboxConfig, store: BlobStore) -> None:
        super().__init__(config)
        self.store = store
        self._checks = CheckRunner()

    def _handlers(self) -> dict[str, Handler]:
        """Each root field's resolver, by field name."""
        return {
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

    # ---- queries ---------------------------------------------------------------------------------

    def _import_session(self, args: dict[str, Any], _caller: Caller) -> dict[str, Any]:
        session = self._find_session(args["importSessionId"])
        self._apply_check(session)
        return session_view(session)

    def _list_import_sessions(self, args: dict[str, Any], _caller: Caller) -> dict[str, Any]:
        model_id = args.get("modelId")
        results = []
        for session in reversed(self.sessions.values()):
            self._apply_check(session)
            if model_id is None or session.model_id == model_id:
                results.append(session_view(session))
        return {"results": results}

    def _parts_upload_status(self, args: dict[str, Any], _caller: Caller) -> list[dict[str, Any]]:
        session = self._find_session(args["importSessionId"])
        file = self._find_file(session, args["importFileId"])
        if file.status == "COMPLETED":
            parts: Sequence[StoredPart] = file.parts
        elif file.upload_id is not None:
            parts = self.store.list_parts(file.upload_id)
        else:
            parts = ()
        return [{"eTag": p.etag, "size": p.size, "partNumber": p.number - 1} for p in parts]

    # ---- sessions and files ----------------------------------------------------------------------

    def _add_import_session(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        organization_id = args["organizationId"]
        if organization_id not in self.config.organizations:
            raise ApiError(
                UNAUTHORIZED, f"This token may not import into organization {organization_id!r}"
            )
        self._check_quota(organization_id)
        moment = now()
        session = ImportSessionRecord(
            id=self._new_id(24, ALNUM_LOWER),
            organization_id=organization_id,
            user_id=caller.user_id,
            process_type=args["processType"],
            name=args.get("name"),
            description=args.get("description"),
            created=moment,
            modified=moment,
        )
        self.sessions[session.id] = session
        return session_view(session)

    def _add_e57_object(self, args: dict[str, Any], _caller: Caller) -> dict[str, Any]:
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
        file_id = self._new_id(25, ALNUM_LOWER)
        record = ImportFileRecord(
            id=file_id,
            client_id=client_id,
            object_id=self._new_id(25, ALNUM_LOWER),
            name=file_spec["name"],
            type=file_spec["type"],
            size=file_spec["size"],
            key=f"import/{session.id}/{file_id}",
        )
        obj = E57ObjectRecord(id=record.object_id, client_id=spec["id"], files=[record])
        session.objects.append(obj)
        session.files[client_id] = record
        session.modified = now()
        return {"id": obj.id, "clientId": obj.client_id, "files": [file_view(f) for f in obj.files]}

    # ---- uploads ---------------------------------------------------------------------------------

    def _begin_upload(self, args: dict[str, Any], _caller: Caller) -> dict[str, Any]:
        session = self._find_session(args["importSessionId"])
        file = self._find_file(session, args["importFileId"])
        if file.status == "STARTED" and self.config.idempotent_retries:
            return file_view(file)
        self._require_open(session)
        if file.status != "PENDING":
            raise ApiError(INVALID, f"file {file.client_id!r} is already {file.status}")
        try:
            file.upload_id = self.store.create_multipart(file.key)
        except BlobError as exc:  # e.g. a blob store in azure mode, which has no multipart
            raise ApiError(INVALID, f"the storage refused the upload: {exc.message}") from None
        file.status = "STARTED"
        session.modified = now()
        return file_view(file)

    def _request_part_upload(self, args: dict[str, Any], _caller: Caller) -> dict[str, Any]:
        session = self._find_session(args["importSessionId"])
        file = self._find_file(session, args["importFileId"])
        self._require_open(session)
        self._require_started(file, "requestPartUpload")
        assert file.upload_id is not None
        part: int = args["part"]
        size: int = args["size"]
        min_size, max_size, max_parts = self._limits(file)
        self._check_part_request(file, part, size, max_size=max_size, max_parts=max_parts)
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

    def _check_part_request(
        self, file: ImportFileRecord, part: int, size: int, *, max_size: int, max_parts: int
    ) -> None:
        """Refuse a requestPartUpload that breaks the part limits (request.invalid)."""
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

    async def _complete_upload(self, args: dict[str, Any], _caller: Caller) -> dict[str, Any]:
        session = self._find_session(args["importSessionId"])
        file = self._find_file(session, args["importFileId"])
        etags = [etag_of(index, entry) for index, entry in enumerate(args["completedParts"])]
        if file.status == "COMPLETED" and self.config.idempotent_retries:
            recorded = [normalize_etag(p.etag) for p in file.parts]
            if [normalize_etag(e) for e in etags] == recorded:
                return file_view(file)
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
        session.modified = now()
        return file_view(file)

    def _commit_import_session(self, args: dict[str, Any], _caller: Caller) -> dict[str, Any]:
        session = self._find_session(args["importSessionId"])
        if session.committed and self.config.idempotent_retries:
            return session_view(session, files=False)
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
        session.check = self._checks.submit([self._file_check(f) for f in session.files.values()])
        session.committed = True
        session.committed_at = time.monotonic()
        session.modified = now()
        return session_view(session, files=False)

    def _file_check(self, file: ImportFileRecord) -> FileCheck:
        assert file.stored is not None
        return FileCheck(
            client_id=file.client_id,
            name=file.name,
            path=self.store.object_path(file.key),
            stored_md5=file.stored.md5,
        )

    def _limits(self, file: ImportFileRecord) -> tuple[int, int, int]:
        """(minSize, maxSize, max part count) for ``file``."""
        if self.config.single_part:
            return file.size, file.size, 1
        return self.config.min_part_size, self.config.max_part_size, self.config.max_parts
