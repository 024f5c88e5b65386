"""The Speckle control plane's front: ``POST /graphql``, and the life of each ingestion.

Rules this module keeps, each one the real server's unless marked:

* **Order at the door.** Every ``POST /graphql`` passes the rate limiter first (sandbox rule:
  every ``rate_limit_every``-th request, counted from 1, gets HTTP 429 with a fractional
  ``Retry-After``), then authentication: ``Authorization: Bearer <token>`` naming a configured
  token, else HTTP 403 ``{"error": "Your token is not valid."}`` before any GraphQL runs; then
  the request is executed (:mod:`.http`).
* **Ingestion life** is a pure function of the time since ``startFileIngestion`` (``clock``;
  see :mod:`.ingestion`). The terminal verdict is decided once, by the first status query that
  needs it: a forced status (``force_status`` or the first matching ``status_rules`` pattern) or
  else the content check, run in a worker thread (the store may download the object first).
  While one request checks, others see the last processing step. A successful ingestion creates
  exactly one version of its model, and makes that model the most recently updated.
* **No background tasks.** Nothing runs between requests, so there is nothing to cancel at
  shutdown; all state belongs to the event loop thread.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from time import monotonic
from types import MappingProxyType
from typing import Any, Generic, TypeVar, overload

import anyio.to_thread
from aiohttp import web

from engine.sandbox.blobstore import BlobStore
from engine.sandbox.responses import json_response
from engine.sandbox.speckle.config import FORCED_MESSAGES, SpeckleSandboxConfig
from engine.sandbox.speckle.errors import INVALID_TOKEN_BODY, RATE_LIMITED_MESSAGE
from engine.sandbox.speckle.http import run_request
from engine.sandbox.speckle.ingestion import (
    check_blob,
    ingestion_phase,
    snapshot_for_phase,
    terminal_snapshot,
)
from engine.sandbox.speckle.records import (
    BlobRecord,
    Caller,
    Info,
    IngestionRecord,
    ModelRecord,
    StatusSnapshot,
    Verdict,
    VersionRecord,
    now,
)
from engine.sandbox.speckle.resolvers import SpeckleResolvers
from engine.sandbox.speckle.schema import build_schema

__all__ = ["SpecklePlane"]

_V = TypeVar("_V")


class _ReadOnly(Generic[_V]):
    """A read-only view (for tests) of the plane's dict attribute of that name with a ``_``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._attribute = f"_{name}"

    @overload
    def __get__(self, obj: None, owner: type) -> _ReadOnly[_V]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> Mapping[str, _V]: ...
    def __get__(self, obj: object | None, owner: type) -> _ReadOnly[_V] | Mapping[str, _V]:
        if obj is None:
            return self
        return MappingProxyType(getattr(obj, self._attribute))


class SpecklePlane(SpeckleResolvers):
    """The Speckle control plane: ``register(app)`` adds ``POST /graphql``.

    Sizes in bytes, times in seconds. ``clock`` (monotonic seconds) drives ingestion progress.
    The mappings it exposes (``projects``, ``models``, ``blobs``, ``ingestions``, ``versions``,
    ``calls``, ``ingested_md5``) are read-only views for tests.
    """

    projects = _ReadOnly[Mapping[str, Any]]()
    models = _ReadOnly[ModelRecord]()
    blobs = _ReadOnly[BlobRecord]()  # by fileId
    ingestions = _ReadOnly[IngestionRecord]()
    versions = _ReadOnly[VersionRecord]()

    def __init__(
        self,
        config: SpeckleSandboxConfig | None,
        store: BlobStore,
        *,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        super().__init__(config if config is not None else SpeckleSandboxConfig(), store, clock)
        resolvers = self._resolvers()
        resolvers["ModelIngestion"] = {"statusData": self._ingestion_status_data}
        self._schema = build_schema(self.config.strict_status_union, resolvers)
        self._judging: set[str] = set()
        self._operations: Counter[str] = Counter()
        self._http: Counter[str] = Counter()

    def __repr__(self) -> str:
        return (
            f"SpecklePlane(projects={len(self._projects)}, models={len(self._models)}, "
            f"blobs={len(self._blobs)}, ingestions={len(self._ingestions)}, "
            f"versions={len(self._versions)}, requests={self._http['requests']})"
        )

    # ---- what tests look at ----------------------------------------------------------------------

    @property
    def calls(self) -> Mapping[str, int]:
        """How often each resolver ran (errors included): ``generateUploadUrl``,
        ``startFileIngestion``, ``modelMutations.create``, ``project``, ``project.ingestion``, …"""
        return MappingProxyType(self._calls)

    @property
    def ingested_md5(self) -> Mapping[str, str]:
        """MD5 hex of each registered blob, by ``fileId`` (``""`` if the store could not tell)."""
        return MappingProxyType(
            {b.file_id: b.md5 or "" for b in self._blobs.values() if b.status == "completed"}
        )

    async def ingestion_status(self, ingestion_id: str) -> StatusSnapshot:
        """The status a query would see now (deciding the verdict if it is due)."""
        return await self._status(self._ingestions[ingestion_id])

    def stats(self) -> dict[str, Any]:
        """Counters, JSON-serialisable: HTTP outcomes, resolver calls, operations, objects."""
        ingestion_states: Counter[str] = Counter()
        for record in self._ingestions.values():
            snapshot = self._known_status(record)
            ingestion_states[snapshot.status] += 1
        return {
            "requests": self._http["requests"],
            "rate_limited": self._http["rate_limited"],
            "unauthenticated": self._http["unauthenticated"],
            "bad_requests": self._http["bad_requests"],
            "calls": dict(self._calls),
            "operations": dict(self._operations),
            "projects": len(self._projects),
            "models": len(self._models),
            "blobs": dict(Counter(b.status for b in self._blobs.values())),
            "ingestions": dict(ingestion_states),
            "versions": len(self._versions),
        }

    # ---- HTTP ------------------------------------------------------------------------------------

    def register(self, app: web.Application) -> None:
        """Add ``POST /graphql`` to ``app``."""
        app.router.add_post("/graphql", self.handle_graphql)

    async def handle_graphql(self, request: web.Request) -> web.Response:
        self._http["requests"] += 1
        every = self.config.rate_limit_every
        if every is not None and self._http["requests"] % every == 0:
            self._http["rate_limited"] += 1
            return json_response(
                {"err": RATE_LIMITED_MESSAGE},
                status=429,
                headers={"Retry-After": f"{self.config.retry_after:g}"},
            )
        caller = self._authenticate(request.headers.get("Authorization"))
        if caller is None:
            self._http["unauthenticated"] += 1
            return json_response(INVALID_TOKEN_BODY, status=403)
        body = await request.read()
        status, payload = await run_request(
            self._schema, body, request.content_type, caller, self._operations
        )
        if status == 400:
            self._http["bad_requests"] += 1
        return json_response(payload, status=status)

    def _authenticate(self, header: str | None) -> Caller | None:
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        projects = self.config.tokens.get(token.strip())
        return None if projects is None else Caller(frozenset(projects))

    # ---- ingestion status ------------------------------------------------------------------------

    async def _ingestion_status_data(
        self, parent: Mapping[str, Any], _info: Info
    ) -> dict[str, Any]:
        if "statusData" in parent:  # the mutation's own answer: always queued
            return dict(parent["statusData"])
        snapshot = await self._status(self._ingestions[parent["id"]])
        return snapshot.to_graphql()

    def _phase(self, record: IngestionRecord) -> int:
        return ingestion_phase(
            self._clock() - record.started,
            step_delay=self.config.step_delay,
            steps=self.config.processing_steps,
        )

    def _known_status(self, record: IngestionRecord) -> StatusSnapshot:
        """The status without deciding anything: a due but undecided verdict shows as the last
        processing step."""
        steps = self.config.processing_steps
        if record.verdict is not None:
            return terminal_snapshot(record.verdict, record.version_id)
        phase = min(self._phase(record), steps)
        return snapshot_for_phase(phase, steps=steps, file_name=record.file_name)

    async def _status(self, record: IngestionRecord) -> StatusSnapshot:
        if record.verdict is not None or self._phase(record) <= self.config.processing_steps:
            return self._known_status(record)
        if record.id in self._judging:  # another request is checking the file right now
            return self._known_status(record)
        self._judging.add(record.id)
        try:
            verdict = await self._judge(record)
        finally:
            self._judging.discard(record.id)
        return self._known_status(self._settle(record.id, verdict))

    async def _judge(self, record: IngestionRecord) -> Verdict:
        if record.forced is not None:
            return Verdict(record.forced, FORCED_MESSAGES[record.forced])
        key = self._blobs[record.file_id].key

        def check() -> str | None:  # object_path may download (S3 storage): off the loop
            return check_blob(self.store.object_path(key), record.file_name)

        reason = await anyio.to_thread.run_sync(check)
        return Verdict("success") if reason is None else Verdict("failed", reason)

    def _settle(self, ingestion_id: str, verdict: Verdict) -> IngestionRecord:
        record = self._ingestions[ingestion_id]
        if record.verdict is not None:
            return record
        version_id = None
        if verdict.status == "success":
            version_id = self._new_id(self._versions)
            moment = now()
            ext = record.file_name.rsplit(".", 1)[-1].upper()
            self._versions[version_id] = VersionRecord(
                id=version_id,
                project_id=record.project_id,
                model_id=record.model_id,
                ingestion_id=record.id,
                file_id=record.file_id,
                referenced_object=secrets.token_hex(16),
                message=f"Imported from {record.file_name}",
                source_application=ext,
                created_at=moment,
            )
            self._order += 1
            model = self._models[record.model_id]
            self._models[model.id] = replace(model, updated_at=moment, order=self._order)
        record = replace(record, verdict=verdict, version_id=version_id)
        self._ingestions[ingestion_id] = record
        return record
