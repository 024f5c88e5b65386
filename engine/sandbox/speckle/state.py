"""The Speckle plane's state: its records, and the life of each ingestion.

Rules this module keeps, each one the real server's unless marked:

* **Ids** are 10 lowercase hex characters (``crypto-random-string``'s default, as the real
  server), drawn from ``secrets`` or, with ``seed``, from ``random.Random(seed)``; never reused.
* **Projects** start with the models in ``initial_models`` (the real server makes ``main``).
* **Ingestion life** is a pure function of the time since it started (``clock``; see
  :mod:`.ingestion`). The terminal verdict is decided once, by the first status query that needs
  it: a forced status (``force_status`` or the first matching ``status_rules`` pattern) or else
  the content check, run in a worker thread (the store may download the object first). While one
  request checks, others see the last processing step. A successful ingestion creates exactly
  one version of its model, and makes that model the most recently updated.
* **No background tasks** (sandbox rule): nothing runs between requests; a status changes when
  someone looks at it (a query, or a live subscription, whose own task owns the looking).
  :meth:`SpeckleState.wait_for_change` wakes such a watcher when a record is added or settled.
* All state belongs to the event loop thread.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any, Final

import anyio
import anyio.to_thread

from engine.sandbox.blobstore import BlobStore
from engine.sandbox.speckle.config import FORCED_MESSAGES, SpeckleSandboxConfig
from engine.sandbox.speckle.formats import check_blob, extension_of
from engine.sandbox.speckle.ingestion import ingestion_phase, snapshot_for_phase, terminal_snapshot
from engine.sandbox.speckle.records import (
    BlobRecord,
    IngestionRecord,
    ModelRecord,
    StatusSnapshot,
    Verdict,
    VersionRecord,
    now,
)

__all__ = ["SpeckleState", "user_id_of"]

_ID_ALPHABET: Final = "0123456789abcdef"


def user_id_of(token: str) -> str:
    """The user id the sandbox gives a token's owner: 10 hex characters derived from it."""
    return hashlib.sha256(b"speckle-user:" + token.encode()).hexdigest()[:10]


class SpeckleState:
    """The plane's records and the life of each ingestion (see the module docstring)."""

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
        self._judging: set[str] = set()
        self._bell: anyio.Event | None = None
        self._changes = 0
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
                self._add_model(project_id, name.strip().lower(), None)

    # ---- records ---------------------------------------------------------------------------------

    def model_by_name(self, project_id: str, name: str) -> ModelRecord | None:
        """The model of ``project_id`` called ``name`` (case-insensitively), if any: the
        repository's ``getStreamBranchByName`` (``LOWER(name) ilike``)."""
        wanted = name.strip().lower()
        for model in self._models.values():
            if model.project_id == project_id and model.name.lower() == wanted:
                return model
        return None

    def _new_id(self, taken: Collection[str]) -> str:
        while True:
            if self._rng is None:
                candidate = secrets.token_hex(5)
            else:
                candidate = "".join(self._rng.choice(_ID_ALPHABET) for _ in range(10))
            if candidate not in taken:
                return candidate

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

    def _add_ingestion(self, record: IngestionRecord) -> IngestionRecord:
        self._ingestions[record.id] = record
        self._ring()
        return record

    def _start_record(
        self, blob: BlobRecord, model_id: str, *, kind: str = "ingestion", size: int | None = None
    ) -> IngestionRecord:
        """A new ingestion (or v2 file upload, whose id is the blob's) of ``blob``."""
        return self._add_ingestion(
            IngestionRecord(
                id=blob.file_id if kind == "upload" else self._new_id(self._ingestions),
                project_id=blob.project_id,
                model_id=model_id,
                file_id=blob.file_id,
                file_name=blob.file_name,
                started=self._clock(),
                created_at=now(),
                forced=self.config.forced_status_for(blob.file_name),
                user_id=blob.user_id,
                kind="upload" if kind == "upload" else "ingestion",
                file_size=size if size is not None else blob.size,
            )
        )

    # ---- change notification ---------------------------------------------------------------------

    def _ring(self) -> None:
        self._changes += 1
        if self._bell is not None:
            self._bell.set()
            self._bell = None

    @property
    def changes(self) -> int:
        """How many times a record was added or settled (pass it to :meth:`wait_for_change`)."""
        return self._changes

    async def wait_for_change(self, since: int, within: float | None) -> None:
        """Return once a record is added or settled after :attr:`changes` read ``since`` (at
        once if that happened already), or after ``within`` seconds (None: no limit)."""
        if self._changes != since:
            return
        if self._bell is None:
            self._bell = anyio.Event()
        with anyio.move_on_after(within):
            await self._bell.wait()

    def seconds_to_next_phase(self, records: Collection[IngestionRecord]) -> float | None:
        """Seconds until the first of ``records`` (not yet settled) changes phase; None if none."""
        step, steps = self.config.step_delay, self.config.processing_steps
        waits = []
        for record in records:
            if record.verdict is not None:
                continue
            phase = self._phase(record)
            due = record.started + (phase + 1) * step if phase <= steps else self._clock()
            waits.append(max(0.0, due - self._clock()))
        return min(waits, default=None)

    # ---- ingestion status ------------------------------------------------------------------------

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
        moment = now()
        if verdict.status == "success":
            version_id = self._new_id(self._versions)
            self._versions[version_id] = VersionRecord(
                id=version_id,
                project_id=record.project_id,
                model_id=record.model_id,
                ingestion_id=record.id,
                file_id=record.file_id,
                referenced_object=secrets.token_hex(16),
                message=f"Imported from {record.file_name}",
                source_application=extension_of(record.file_name).upper(),
                created_at=moment,
            )
            self._order += 1
            model = self._models[record.model_id]
            self._models[model.id] = replace(model, updated_at=moment, order=self._order)
        record = replace(record, verdict=verdict, version_id=version_id, settled_at=moment)
        self._ingestions[ingestion_id] = record
        self._ring()
        return record
