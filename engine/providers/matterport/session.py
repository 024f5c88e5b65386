"""One import: a session opened or resumed, its files added and sent, committed, and its model.

Rules:
- every file is checked before the first request, each check once per file: it exists, it is
  listed once, and it is an E57 (``ASTM-E57`` header); the first bad one fails the import with
  a ``SourceError`` / ``ConfigError`` / ``FormatError``;
- resume: the session's journal (key ``matterport_session_key(endpoint, organization,
  paths)``) holds the session id with each file's size and mtime (``SessionOpened``), the
  commit marks and the model (``ModelReady``); never a token or a URL. A rerun with the same,
  unchanged files continues the same session, asks the server what it holds
  (``importSession``) and sends only what is missing; the server's word wins over the journal;
- the server is the truth: a journaled session is resumed only when the server holds it for
  this organization and, once the journal knows its model, with that model; else a new
  session is opened. A session that had to be (re)created voids whatever the journal held
  under its id for these files (a second server may hand out an id the journal knows: the
  sandbox's ids are seeded), and a file the journal says is done counts only once the
  server holds it as COMPLETED (``MatterportFileTarget.confirm``);
- ``services.force`` opens a new session (a new model) whatever the journal holds; an import
  whose files were all confirmed, into a model the server already has, sent nothing and says
  so (``MatterportResult.skipped``);
- a changed file starts a new session (or is refused, with ``on_change="refuse"``), and is
  reported once as changed since the last run: its journal under the old session restarts;
- each file's journal is begun here, once, before the file is sent (the engine's own begin
  then finds it started); its ids in the session are journaled as ``FileAdded``;
- a mutation that may already have happened (a retry after a lost answer, a crash) is
  reconciled against ``importSession`` rather than failing: a file already added, a session
  already committed (its model is set, or a commit refused as a repeat finds every file
  COMPLETED). ``listImportSessions`` is never asked without the ``modelId`` the guide marks
  required. ``Mark.COMMIT_REQUESTED`` is journaled before ``commitImportSession`` is sent,
  ``Mark.COMMITTED`` once it took;
- the files of a session are sent at once through ``services.transfer`` (the one budget); one
  error per import: the first failed file's (in the order given), noting how many more failed;
- a graceful stop (``services.stopping``) stops the import before commit, or at once while it
  waits for the model, with ``InterruptedUpload``; a rerun continues from the journal;
- waiting for the model polls ``importSession`` every ``poll_interval`` seconds, growing by
  half each time up to eight times that, for at most ``model_deadline`` seconds, on the
  services' clock; then a ``ProcessingError`` names the session (a rerun picks it up again).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import anyio

from engine.errors import (
    ConfigError,
    InterruptedUpload,
    NotFoundError,
    ProcessingError,
    SourceChangedError,
    UploadError,
)
from engine.events import Phase
from engine.graphql import GraphQLClient, need_obj, need_str
from engine.journal import (
    FileAdded,
    Mark,
    ModelReady,
    SessionOpened,
    UploadVoided,
    matterport_file_key,
    matterport_session_key,
)
from engine.models import FileInfo, Skipped, UploadResult
from engine.providers.matterport.documents import (
    ADD_E57_OBJECT,
    ADD_IMPORT_SESSION,
    COMMIT_IMPORT_SESSION,
    COMPLETED,
    ENDPOINT,
    FILE_TYPE,
    PLATFORM,
    PROCESS_TYPE,
)
from engine.providers.matterport.errors import REPEAT_REFUSED, MatterportCredentials, classify
from engine.providers.matterport.files import (
    changed_files,
    check_files,
    fingerprints,
    free_number,
    on_server,
)
from engine.providers.matterport.target import (
    MatterportFile,
    MatterportFileTarget,
    fetch_session,
    file_of,
    files_of,
    same_file,
)
from engine.target import HasServices, Services
from engine.wait import Polls

__all__ = ["Matterport", "MatterportResult", "check_files"]

_GROWTH_CAP = 8  # the poll interval grows up to this many times ``poll_interval``


@dataclass(frozen=True, slots=True)
class MatterportResult:
    """One import: the session, the model it became, and each file's upload.

    ``seconds`` is the time of the whole import on the services' clock (checks, uploads,
    waiting for the model); ``bytes`` the total size of the files; ``operations`` the GraphQL
    operations sent, in order. ``skipped`` is set when nothing was sent: every file was
    confirmed on the server and its model was there already (``since``: when the last of
    the files finished, by the journal).
    """

    session_id: str
    model_id: str
    files: tuple[UploadResult, ...]
    seconds: float
    bytes: int
    operations: tuple[str, ...] = ()
    skipped: Skipped | None = None

    @property
    def throughput(self) -> float:
        """Bytes per second of the whole import (0 for an instant one)."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


# ---- one import ----------------------------------------------------------------------------------


class _Import:
    """The state of one ``import_files`` call (one session)."""

    def __init__(
        self, services: Services, client: GraphQLClient, organization: str, infos: list[FileInfo]
    ) -> None:
        self.services = services
        self.client = client
        self.endpoint = client.endpoint
        self.organization = organization
        self.infos = infos
        self.fingerprints = fingerprints(infos)
        self.files: list[MatterportFile] = []
        self.session_id = ""
        self.model_id = ""
        self.server_files: dict[str, dict[str, Any]] = {}
        self.journal = services.journal(matterport_session_key(self.endpoint, organization, infos))

    def __repr__(self) -> str:
        return f"<_Import session={self.session_id or '-'} files={len(self.infos)}>"

    def emit_all(self, message: str) -> None:
        for info in self.infos:
            self.services.emit(Phase(info.path, message))

    async def open_session(self, name: str | None, description: str | None) -> None:
        if self.services.force:
            self.emit_all("a new import session, as forced")
        known = "" if self.services.force else self._journaled_session()
        if known and await self._resume(known):
            return
        op = "addImportSession"
        variables: dict[str, Any] = {
            "organizationId": self.organization,
            "processType": PROCESS_TYPE,
        }
        if name is not None:
            variables["name"] = name
        if description is not None:
            variables["description"] = description
        data = await self.client.execute(ADD_IMPORT_SESSION, variables)
        session_id = need_str(need_obj(data.get(op), op, PLATFORM).get("id"), op, PLATFORM, "id")
        self.session_id = session_id
        self.journal.record(SessionOpened(session_id=session_id, files=self.fingerprints))
        self._void_files_below(session_id)
        self.emit_all(f"import session {session_id} created")

    def _void_files_below(self, session_id: str) -> None:
        """A session just created holds nothing: void what the journal knew under its id."""
        for info in self.infos:
            fj = self.services.journal(matterport_file_key(self.endpoint, session_id, info))
            st = fj.state
            if st.done is not None or st.parts or st.facts or st.marks:
                fj.record(UploadVoided())

    def _journaled_session(self) -> str:
        """The journaled session to resume, or "" to open a new one (a file changed)."""
        opened = self.journal.state.get(SessionOpened)
        if opened is None:
            return ""
        if opened.files == self.fingerprints:
            return opened.session_id
        changed = changed_files(opened.files, self.fingerprints, self.infos)
        if self.services.on_change == "refuse":
            names = ", ".join(i.key for i in changed) or "the file list"
            raise SourceChangedError(
                f"{names} changed since import session {opened.session_id} started; rerun "
                "with --on-change restart to import the new contents in a new session"
            )
        for info in changed:  # the journal knows the file's old size and mtime there: it says so
            self.services.begin(matterport_file_key(self.endpoint, opened.session_id, info), info)
        return ""

    async def _resume(self, session_id: str) -> bool:
        try:
            session = await fetch_session(self.client, session_id)
        except NotFoundError:
            return False  # gone (expired or deleted): start again
        why = self._not_ours(session)
        if why:
            self.emit_all(f"import session {session_id} on this server {why}: starting anew")
            return False
        self.session_id = session_id
        self.server_files = files_of(session)
        self.model_id = str(session.get("modelId") or "")
        self.emit_all(f"resuming import session {session_id}")
        return True

    def _not_ours(self, session: Mapping[str, Any]) -> str:
        """Why the server's session of the journaled id is not the one journaled, or ""."""
        organization = str(session.get("organizationId") or "")
        if organization and organization != self.organization:
            return f"belongs to organization {organization}"
        known = self.journal.state.get(ModelReady)
        model_id = str(session.get("modelId") or "")
        if known is not None and model_id != known.model_id:
            return f"has {f'model {model_id}' if model_id else 'no model'}, not {known.model_id}"
        return ""

    def skipped(self, uploads: Sequence[UploadResult], model_known: bool) -> Skipped | None:
        """The import sent nothing: every file confirmed, into a model the server had."""
        if not model_known or not uploads or any(u.skipped is None for u in uploads):
            return None
        return Skipped("already uploaded", max(u.skipped.since for u in uploads if u.skipped))

    async def add_files(self) -> None:
        journals = [
            self.services.begin(matterport_file_key(self.endpoint, self.session_id, i), i)
            for i in self.infos
        ]
        added = [fj.state.get(FileAdded) for fj in journals]
        claimed = {a.client_id for a in added if a is not None and a.client_id in self.server_files}
        taken = set(self.server_files)
        for position, (info, fj, known) in enumerate(
            zip(self.infos, journals, added, strict=True), 1
        ):
            file = await self._file(position, info, known, claimed, taken)
            fj.record(
                FileAdded(
                    session_id=self.session_id,
                    client_id=file.client_id,
                    e57_id=file.e57_id,
                    file_id=file.file_id,
                )
            )
            taken.add(file.client_id)
            claimed.add(file.client_id)
            self.files.append(file)

    async def _file(
        self,
        position: int,
        info: FileInfo,
        added: FileAdded | None,
        claimed: set[str],
        taken: set[str],
    ) -> MatterportFile:
        """The file at 1-based ``position`` as the session holds it, added when it does not."""
        found = on_server(position, info, added, self.server_files, claimed)
        if found is not None:
            client_id, record = found
            return file_of(info, client_id, record, added.e57_id if added is not None else "")
        number = free_number(position, taken)
        file = await self._add(info, f"file{number}", f"e57-{number}")
        self.services.emit(Phase(info.path, f"added to import session as {file.client_id}"))
        return file

    async def _add(self, info: FileInfo, client_id: str, e57_id: str) -> MatterportFile:
        op = "addE57Object"
        e57 = {
            "id": e57_id,
            "file": {
                "clientId": client_id,
                "name": info.path.name,
                "type": FILE_TYPE,
                "size": info.size,
            },
        }
        try:
            data = await self.client.execute(
                ADD_E57_OBJECT, {"importSessionId": self.session_id, "e57": e57}
            )
        except REPEAT_REFUSED:
            # A retry after a lost answer finds the file already added: adopt it.
            session = await fetch_session(self.client, self.session_id)
            found = files_of(session).get(client_id)
            if found is None or not same_file(found, info):
                raise
            return file_of(info, client_id, found)
        added = need_obj(data.get(op), op, PLATFORM)
        record = files_of(added).get(client_id) or {}
        return file_of(info, client_id, record, str(added.get("id") or ""))

    async def upload(self) -> list[UploadResult]:
        results: list[UploadResult | None] = [None] * len(self.files)
        errors: list[tuple[int, UploadError]] = []

        async def one(i: int, file: MatterportFile) -> None:
            target = MatterportFileTarget(self.client, self.session_id, file)
            try:
                results[i] = await self.services.transfer(file.info, target)
            except UploadError as exc:
                errors.append((i, exc))

        async with anyio.create_task_group() as tg:
            for i, file in enumerate(self.files):
                tg.start_soon(one, i, file)
        if errors:
            errors.sort(key=lambda e: e[0])
            first = errors[0][1]
            if len(errors) > 1:
                first.add_note(f"{len(errors) - 1} more file(s) of the import failed too")
            raise first
        return [r for r in results if r is not None]

    async def _committed(self, refused: bool = False) -> bool:
        """Whether the server already took ``commitImportSession`` for this session: it has
        its model, or (after a commit ``refused`` as a repeat) every file of ours is
        COMPLETED there. ``listImportSessions`` is not asked: it needs the ``modelId``."""
        session = await fetch_session(self.client, self.session_id)
        if session.get("modelId"):
            return True
        held = files_of(session)
        mine = [held.get(f.client_id) or {} for f in self.files]
        return refused and all(r.get("uploadStatus") == COMPLETED for r in mine)

    async def commit(self) -> None:
        marks = self.journal.state.marks
        if self.model_id or Mark.COMMITTED in marks:
            return
        if self.services.stopping:
            raise InterruptedUpload(
                f"import session {self.session_id}: stopped before commit; rerun to finish it"
            )
        if Mark.COMMIT_REQUESTED not in marks or not await self._committed():
            self.journal.mark(Mark.COMMIT_REQUESTED)  # a rerun then checks, never repeats
            try:
                await self.client.execute(
                    COMMIT_IMPORT_SESSION, {"importSessionId": self.session_id}
                )
            except REPEAT_REFUSED:
                if not await self._committed(refused=True):  # a retry after a lost answer?
                    raise
        self.journal.mark(Mark.COMMITTED)
        self.emit_all(f"import session {self.session_id} committed")

    async def wait_model(self, interval: float, deadline: float) -> str:
        """The session's model id, polled for until ``deadline`` seconds have passed or a
        graceful stop begins (then at once: ``InterruptedUpload``)."""
        if not self.model_id:
            self.emit_all("waiting for the model")
            self.model_id = await self._poll_until_stopped(interval, deadline)
        known = self.journal.state.get(ModelReady)
        if known is None or known.model_id != self.model_id:
            self.journal.record(ModelReady(model_id=self.model_id))
        self.emit_all(f"model {self.model_id} ready")
        return self.model_id

    async def _poll_until_stopped(self, interval: float, deadline: float) -> str:
        """``_poll_model``, cut short the moment a graceful stop begins."""
        outcome: list[str | UploadError] = []

        async def stop_watch(scope: anyio.CancelScope) -> None:
            await self.services.wait_stopping()
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_watch, tg.cancel_scope)
            try:
                outcome.append(await self._poll_model(interval, deadline))
            except UploadError as exc:  # raised below, not wrapped in an ExceptionGroup
                outcome.append(exc)
            finally:
                tg.cancel_scope.cancel()
        if not outcome:
            raise InterruptedUpload(
                f"import session {self.session_id}: stopped while waiting for the model; "
                "rerun to pick it up"
            )
        if isinstance(outcome[0], UploadError):
            raise outcome[0]
        return outcome[0]

    async def _poll_model(self, interval: float, deadline: float) -> str:
        clock = self.services.clock
        async for _ in Polls(
            clock, interval=interval, ceiling=interval * _GROWTH_CAP, deadline=deadline
        ):
            session = await fetch_session(self.client, self.session_id)
            model_id = str(session.get("modelId") or "")
            if model_id:
                return model_id
            if self.services.stopping:
                raise InterruptedUpload(
                    f"import session {self.session_id}: stopped while waiting for the model; "
                    "rerun to pick it up"
                )
        raise ProcessingError(
            f"importSession: no model for import session {self.session_id} after "
            f"{deadline:g} s; it may still be processing: rerun later to pick it up"
        )


# ---- the entry point -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Matterport:
    """The Matterport Import API (seed ``000``) for one set of credentials.

    endpoint:        the Import API's GraphQL endpoint.
    poll_interval:   seconds between the first ``importSession`` polls for the model; the
                     interval grows by half each time up to eight times this.
    model_deadline:  seconds to wait for the model after commit before giving up.

    Waiting, retries and time come from the uploader's services (``services.clock``,
    ``services.retry``): a test passes ``Uploader(clock=FakeClock())``.
    """

    credentials: MatterportCredentials
    _: KW_ONLY
    endpoint: str = ENDPOINT
    poll_interval: float = 2.0
    model_deadline: float = 3600.0

    def __post_init__(self) -> None:
        if not self.poll_interval > 0 or not self.model_deadline > 0:
            raise ConfigError("poll_interval and model_deadline must be positive seconds")

    def __repr__(self) -> str:
        return f"<Matterport {self.endpoint} token_id={self.credentials.token_id!r}>"

    def graphql(self, services: Services) -> GraphQLClient:
        """A GraphQL client on the services' control pool, retrying by their policy."""
        return GraphQLClient(
            services.http,
            self.endpoint,
            headers={"Authorization": self.credentials.authorization},
            classify=classify,
            policy=services.retry,
            clock=services.clock,
        )

    async def import_files(
        self,
        uploader: HasServices,
        paths: Sequence[str | os.PathLike[str]],
        *,
        organization: str,
        name: str | None = None,
        description: str | None = None,
    ) -> MatterportResult:
        """Import ``paths`` (E57 files) into one model of ``organization``; see the package
        docstring for the flow. Raises one ``UploadError`` (the first failed file's)."""
        if not organization or not organization.strip():
            raise ConfigError("organization must be a Matterport organization id")
        services = uploader.services
        started = services.clock.monotonic()
        infos = check_files(paths)
        client = self.graphql(services)
        run = _Import(services, client, organization, infos)
        await run.open_session(name, description)
        model_known = bool(run.model_id)  # the resumed session had its model already
        await run.add_files()
        uploads = await run.upload()
        await run.commit()
        model_id = await run.wait_model(self.poll_interval, self.model_deadline)
        return MatterportResult(
            session_id=run.session_id,
            model_id=model_id,
            files=tuple(uploads),
            seconds=services.clock.monotonic() - started,
            bytes=sum(i.size for i in infos),
            operations=tuple(client.calls),
            skipped=run.skipped(uploads, model_known),
        )
