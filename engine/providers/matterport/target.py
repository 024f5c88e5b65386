"""One file of an import session, driven by the engine: ``MatterportFileTarget``.

Rules:
- parts are zero-based on the wire (``part: n - 1`` for the engine's part ``n``); the server
  decides part sizes, so ``prepare`` asks for part 0 with the whole size first and plans from
  its ``minSize``/``maxSize`` (one part when both equal the file size); a file above
  ``maxSize`` cannot be asked for whole: a few smaller first parts are asked for instead (the
  preferred part size, then halves), with no wait between them (a refusal is an answer, not
  a transient failure); whatever ``maxSize`` says, no part is planned above 5 GiB (S3's
  ceiling for one PUT, ``MAX_PUT_SIZE``), and a file the server wants in one part above that
  is refused before a byte is sent;
- ETags go to ``completeUpload`` in part order and in the guide's form: without the quotes the
  storage put around them (its sample value is bare hex; its example strips the quotes);
- the file's journal (key ``matterport_file_key(endpoint, session, path)``) holds its ids in
  the session (``FileAdded``), its part limits (``PartLimitsKnown``) and each part's ETag;
  never a token or a URL;
- resume: a file the server holds as STARTED is asked which parts it has
  (``importFilePartsUploadStatus``); a part counts as stored only when the server lists it at
  the planned size with the ETag the journal recorded for it (quotes aside), every other part
  is sent again. That match also settles the server's numbering of ``partNumber`` (zero-based
  like ``requestPartUpload``'s ``part``, or one-based like S3's): the base under which more
  journaled ETags match wins, zero-based on a tie;
- a file the journal says is done counts only when the server's session holds it as
  COMPLETED (``confirm``); otherwise it is uploaded again;
- ``beginUpload`` or ``completeUpload`` refused as a repeat (a retry after a lost answer) is
  reconciled against ``importSession``: a file already STARTED or COMPLETED is what we wanted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from engine.clock import Clock
from engine.errors import InvalidRequestError, NotFoundError, ServiceError, TooLargeError
from engine.graphql import GraphQLClient, dig, need_int, need_obj
from engine.journal import FileAdded, JournalKey, PartLimitsKnown, matterport_file_key
from engine.models import (
    MAX_PUT_SIZE,
    FileInfo,
    PartLimits,
    PartRequest,
    PartResult,
    PartSpec,
    Remote,
)
from engine.providers.matterport.documents import (
    BEGIN_UPLOAD,
    COMPLETE_UPLOAD,
    COMPLETED,
    IMPORT_FILE_PARTS_UPLOAD_STATUS,
    IMPORT_SESSION,
    PENDING,
    PLATFORM,
    REQUEST_PART_UPLOAD,
    STARTED,
)
from engine.providers.matterport.errors import REPEAT_REFUSED
from engine.retry import RetryPolicy
from engine.target import CONFIRMED, Confirmation, Target, TargetContext
from engine.wait import Attempts

__all__ = [
    "MatterportFile",
    "MatterportFileRemote",
    "MatterportFileTarget",
    "fetch_session",
    "file_of",
    "files_of",
    "same_file",
]

_PROBES: Final = 3  # smaller first parts tried when the whole size is refused
#: the probes for the part limits: the first try and ``_PROBES`` smaller ones, back to back
_PROBING: Final = RetryPolicy(max_attempts=1 + _PROBES, base=0.0, cap=0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class MatterportFileRemote(Remote):
    """Where a file landed: its import session, its ``clientId`` there and the server's id."""

    session_id: str
    client_id: str
    file_id: str


@dataclass(slots=True)
class MatterportFile:
    """One file of an import session, as the server knows it (``status``: PENDING, STARTED,
    COMPLETED). ``client_id`` is the ``importFileId`` every file-level call sends."""

    info: FileInfo
    client_id: str
    e57_id: str = ""
    file_id: str = ""
    status: str = PENDING


# ---- reading the server's answers (pure) ---------------------------------------------------------


def files_of(session: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The session's (or E57 object's) files by clientId."""
    out: dict[str, dict[str, Any]] = {}
    for item in session.get("files") or ():
        if isinstance(item, dict) and isinstance(item.get("clientId"), str):
            out[item["clientId"]] = item
    return out


def file_of(
    info: FileInfo, client_id: str, record: Mapping[str, Any], e57_id: str = ""
) -> MatterportFile:
    """``info`` as the server's file ``record`` describes it."""
    return MatterportFile(
        info,
        client_id,
        e57_id=e57_id,
        file_id=str(record.get("id") or ""),
        status=str(record.get("uploadStatus") or PENDING),
    )


def same_file(item: Mapping[str, Any], info: FileInfo) -> bool:
    """Whether the server's file record describes ``info`` (same name, same size)."""
    return item.get("name") == info.path.name and str(item.get("size")) == str(info.size)


def read_limits(answer: Mapping[str, Any], size: int) -> PartLimits:
    """The part limits a ``requestPartUpload`` answer gives for a file of ``size`` bytes,
    with no part above ``MAX_PUT_SIZE`` whatever ``maxSize`` says."""
    op = "requestPartUpload"
    min_size = need_int(answer.get("minSize"), op, PLATFORM, "minSize")
    max_size = need_int(answer.get("maxSize"), op, PLATFORM, "maxSize")
    if not 0 <= min_size <= max_size or max_size < 1:
        raise ServiceError(f"{op}: unusable part limits from {PLATFORM}: {min_size}..{max_size}")
    single = min_size == max_size == size
    if single and size > MAX_PUT_SIZE:
        raise TooLargeError(
            f"{PLATFORM} asks for this file in one part of {size} bytes, above the "
            f"{MAX_PUT_SIZE} bytes one PUT to its storage can hold"
        )
    max_size = min(max_size, MAX_PUT_SIZE)
    return PartLimits(min_size=min(min_size, max_size), max_size=max_size, single=single)


def journaled_limits(known: PartLimitsKnown | None) -> PartLimits:
    """The limits a completed file was planned with (one part when the journal lost them)."""
    if known is None:
        return PartLimits(single=True)
    return PartLimits(min_size=known.min_size, max_size=known.max_size)


def bare_etag(etag: str) -> str:
    """An ETag as the guide sends it to ``completeUpload``: without surrounding quotes."""
    return etag.strip().strip('"')


def held_parts(items: Any) -> dict[int, tuple[str, int]]:
    """``importFilePartsUploadStatus``'s answer as {the server's partNumber: (ETag, size)}."""
    op = "importFilePartsUploadStatus"
    held: dict[int, tuple[str, int]] = {}
    for item in items or ():
        if isinstance(item, dict) and item.get("eTag"):
            number = need_int(item.get("partNumber"), op, PLATFORM, "partNumber")
            held[number] = (str(item["eTag"]), need_int(item.get("size"), op, PLATFORM, "size"))
    return held


def _matched(
    plan: Sequence[PartSpec],
    held: Mapping[int, tuple[str, int]],
    journal: Mapping[int, PartResult],
    base: int,
) -> dict[int, PartResult]:
    out: dict[int, PartResult] = {}
    for p in plan:
        mine = journal.get(p.number)
        etag, size = held.get(p.number - 1 + base, ("", -1))
        if (
            mine is not None
            and size == mine.size == p.size
            and bare_etag(etag) == bare_etag(mine.etag)
        ):
            out[p.number] = mine  # as the storage returned it
    return out


def match_held(
    plan: Sequence[PartSpec], held: Mapping[int, tuple[str, int]], journal: Mapping[int, PartResult]
) -> dict[int, PartResult]:
    """The planned parts the server holds with the ETag the journal recorded for them, at the
    planned size, under the server's numbering (see the module rules); nothing else counts."""
    zero, one = _matched(plan, held, journal, 0), _matched(plan, held, journal, 1)
    return one if len(one) > len(zero) else zero


def part_request_of(answer: Mapping[str, Any], index: int) -> PartRequest:
    """How to send part ``index`` (zero-based), from a ``requestPartUpload`` answer."""
    url = answer.get("url")
    if not isinstance(url, str) or not url:
        raise ServiceError(
            f"requestPartUpload: malformed answer from {PLATFORM} (no url for part {index})"
        )
    headers = tuple(
        (str(h.get("key", "")), str(h.get("value", "")))
        for h in answer.get("headers") or ()
        if isinstance(h, dict) and h.get("key")
    )
    method = str(answer.get("method") or "PUT").upper()
    return PartRequest(url=url, method=method, headers=headers)


async def fetch_session(client: GraphQLClient, session_id: str) -> dict[str, Any]:
    """The ``importSession`` record; ``NotFoundError`` when the server has none."""
    data = await client.execute(IMPORT_SESSION, {"importSessionId": session_id})
    session = data.get("importSession")
    if session is None:
        raise NotFoundError(f"importSession: import session {session_id} not found")
    return need_obj(session, "importSession", PLATFORM)


# ---- one file ------------------------------------------------------------------------------------


class MatterportFileTarget(Target):
    """One E57 file of an import session, driven by the engine (see the module docstring)."""

    kind = "matterport"
    remote_type = MatterportFileRemote

    def __init__(self, client: GraphQLClient, session_id: str, file: MatterportFile) -> None:
        self._client = client
        self.session_id = session_id
        self.file = file
        self._resumed = file.status == STARTED  # the server may hold parts already
        self._first: tuple[int, int, PartRequest] | None = None  # prepare's answer, kept once

    def __repr__(self) -> str:
        f = self.file
        return f"<MatterportFileTarget session={self.session_id} {f.client_id} {f.status}>"

    def journal_key(self, file: FileInfo) -> JournalKey:
        return matterport_file_key(self._client.endpoint, self.session_id, file)

    def _ids(self) -> dict[str, Any]:
        return {"importSessionId": self.session_id, "importFileId": self.file.client_id}

    async def _server_status(self) -> str:
        session = await fetch_session(self._client, self.session_id)
        return str(dig(files_of(session), self.file.client_id, "uploadStatus") or "")

    async def _request_part(self, index: int, size: int) -> tuple[dict[str, Any], PartRequest]:
        op = "requestPartUpload"
        data = await self._client.execute(
            REQUEST_PART_UPLOAD, {**self._ids(), "part": index, "size": size}
        )
        answer = need_obj(data.get(op), op, PLATFORM)
        return answer, part_request_of(answer, index)

    async def _begin(self, ctx: TargetContext) -> None:
        f = self.file
        try:
            await self._client.execute(BEGIN_UPLOAD, self._ids())
        except REPEAT_REFUSED:
            status = await self._server_status()  # a retry after a lost answer?
            if status not in (STARTED, COMPLETED):
                raise
            f.status = status
        else:
            f.status = STARTED
        ctx.phase("upload begun")

    async def _probe(
        self, size: int, part_size: int, clock: Clock
    ) -> tuple[int, dict[str, Any], PartRequest]:
        """Part 0 asked for whole, else smaller: (the size asked, the answer, its request)."""
        probe = size
        async for attempt in Attempts(_PROBING, clock):
            try:
                answer, request = await self._request_part(0, probe)
            except InvalidRequestError:
                smaller = min(part_size, probe // 2)
                if attempt.last or smaller < 1:
                    raise
                probe = smaller
            else:
                return probe, answer, request
        raise AssertionError("unreachable")  # pragma: no cover

    async def confirm(self, remote: Remote, ctx: TargetContext) -> Confirmation:
        """The server's session holds this file (same name and size) as COMPLETED."""
        where = f"import session {self.session_id}"
        try:
            session = await fetch_session(self._client, self.session_id)
        except NotFoundError:
            return Confirmation(False, f"the server has no {where}")
        record = files_of(session).get(self.file.client_id)
        if record is None or not same_file(record, ctx.file):
            return Confirmation(False, f"{where} does not hold it as {self.file.client_id}")
        status = str(record.get("uploadStatus") or PENDING)
        if status != COMPLETED:
            return Confirmation(False, f"{where} holds it as {status}")
        self.file.status = COMPLETED
        return CONFIRMED

    async def prepare(self, ctx: TargetContext) -> PartLimits:
        f = self.file
        if ctx.journal.state.get(FileAdded) is None:  # voided: the ids stay known
            ctx.journal.record(
                FileAdded(
                    session_id=self.session_id,
                    client_id=f.client_id,
                    e57_id=f.e57_id,
                    file_id=f.file_id,
                )
            )
        if self.file.status == PENDING:
            await self._begin(ctx)
        if self.file.status == COMPLETED:
            return journaled_limits(ctx.journal.state.get(PartLimitsKnown))
        size = ctx.file.size
        probe, answer, request = await self._probe(size, ctx.config.part_size, ctx.services.clock)
        limits = read_limits(answer, size)
        ctx.journal.record(PartLimitsKnown(min_size=limits.min_size, max_size=limits.max_size))
        self._first = (0, probe, request)
        return limits

    async def stored_parts(
        self, plan: Sequence[PartSpec], ctx: TargetContext
    ) -> dict[int, PartResult]:
        journal = ctx.journal.state.parts
        if self.file.status == COMPLETED:  # nothing to send; ETags are for the record only
            return {
                p.number: journal.get(p.number) or PartResult(p.number, "", p.size) for p in plan
            }
        if not self._resumed:
            return {}
        data = await self._client.execute(IMPORT_FILE_PARTS_UPLOAD_STATUS, self._ids())
        return match_held(plan, held_parts(data.get("importFilePartsUploadStatus")), journal)

    async def part_request(
        self, part: PartSpec, ctx: TargetContext, *, refresh: bool
    ) -> PartRequest:
        index = part.number - 1
        first, self._first = self._first, None
        if first is not None and not refresh and first[:2] == (index, part.size):
            return first[2]
        _, request = await self._request_part(index, part.size)
        return request

    async def complete(
        self, parts: Sequence[PartResult], ctx: TargetContext
    ) -> MatterportFileRemote:
        f = self.file
        if f.status != COMPLETED:
            completed = [{"headers": [{"key": "ETag", "value": bare_etag(p.etag)}]} for p in parts]
            try:
                await self._client.execute(
                    COMPLETE_UPLOAD, {**self._ids(), "completedParts": completed}
                )
            except REPEAT_REFUSED:
                if await self._server_status() != COMPLETED:  # a retry after a lost answer?
                    raise
            f.status = COMPLETED
            ctx.phase("upload completed")
        return MatterportFileRemote(
            session_id=self.session_id, client_id=f.client_id, file_id=f.file_id
        )
