"""``upload-engine upload FILE... --to DEST``: files to one destination (resumable, except into
a fresh in-process sandbox).

Matterport takes every file into one import session; every other destination takes the files
one by one, ``--files-at-once`` of them at a time, all under the one ``--concurrency`` budget
(S3: with one botocore client for all). A file that fails does not stop the others; the exit
code is the table's (``engine.cli.output``). A directory is refused: ``import`` takes those.

The same command after a finished upload that the destination confirms sends nothing and says
one line, ``already uploaded: <where> on <when>; --force to upload again``, with 0 bytes sent,
no throughput, and ``"status": "skipped", "reason": "already uploaded"`` in ``--json``;
``--force`` uploads it again (a new object, Speckle version or Matterport model).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.cli.options import (
    DESTINATIONS,
    JOURNAL,
    Kind,
    add_destination_options,
    add_engine_options,
    check_destination,
    destination_kind,
    engine_config,
    positive,
    state_dir_default,
    view_mode,
    view_options,
)
from engine.cli.output import (
    EXIT_OK,
    Outcome,
    escape,
    exit_code_of,
    one_line,
    plural,
    remote_fields,
    summary_line,
    worst,
)
from engine.cli.progress import progress_for
from engine.cli.verbosity import http_trace, rank
from engine.errors import ConfigError, UploadError
from engine.models import FileInfo, Skipped

if TYPE_CHECKING:  # imported by the runner alone: parsing the command line needs neither
    from engine.cli.destinations import Destination
    from engine.client import Uploader

__all__ = ["already_line", "register", "run_upload"]

ALREADY = "already uploaded"  # the reason ``--json`` and reports give for a skipped file

#: what a destination's sender returns: the summary's subject, the bytes sent, the
#: destination's own fields of the JSON record, and the exit code
Sent = tuple[str, int, dict[str, Any], int]
Record = dict[str, Any]  # one file's part of the JSON record
FileSender = Callable[["Uploader", "Destination", argparse.Namespace, FileInfo], Awaitable[Record]]


def register(up: argparse.ArgumentParser) -> None:
    """The arguments of ``upload`` (its name and line in ``--help``: ``app.COMMANDS``)."""
    up.description = "Upload files. Destinations: " + DESTINATIONS
    up.add_argument("files", nargs="+", metavar="FILE")
    add_destination_options(up, tree=False)
    up.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="resume journal (default ~/.local/state/upload-engine)",
    )
    up.add_argument(
        "--files-at-once", type=positive, default=None, metavar="N",
        help="files in flight (default 4; not Matterport, whose files share a session)",
    )  # fmt: skip
    add_engine_options(up)
    up.set_defaults(runner=run_upload)


def _infos(args: argparse.Namespace) -> list[FileInfo]:
    """The files, checked before anything is sent; a directory names the command for it."""
    for name in args.files:
        if Path(name).is_dir():
            raise ConfigError(
                f"{escape(name)}: is a directory; to upload a directory use "
                f"upload-engine import {escape(name)} --to {args.to}"
            )
    return [FileInfo.of(p) for p in args.files]


async def run_upload(args: argparse.Namespace) -> Outcome:
    from engine.cli.destinations import open_destination
    from engine.client import Uploader

    infos = _infos(args)
    check_destination(args, files=len(infos))
    send = _to_matterport if destination_kind(args.to) == "matterport" else _send_files
    total = sum(i.size for i in infos)
    kw = view_options(args)
    with progress_for(
        view_mode(args), files=len(infos), total=total, quiet_failures=len(infos) == 1, **kw
    ) as view:
        async with open_destination(args, sandbox_dir=args.sandbox_dir) as dest:
            state_dir: Path = args.state_dir or state_dir_default()
            journal = state_dir / JOURNAL if dest.resumable else None
            trace = [http_trace(lambda m: view.print(m, "DEBUG"))] if rank(view.level) > 2 else []
            async with Uploader(
                engine_config(args),
                on_event=view,
                journal=journal,
                trace_configs=trace,
                force=getattr(args, "force", False),
            ) as up:
                view.watch(lambda: up.connections)
                subject, size, fields, code = await send(up, dest, args, infos)
    already = fields.pop("already", "")
    if already:  # nothing needed sending: no throughput for bytes never sent
        record = {"destination": _named(args.to), **fields, "status": "skipped", "reason": ALREADY}
        return Outcome(already, {**record, "bytes": size, "bytes_sent": 0}, code=code)
    record = {
        "destination": _named(args.to),
        **fields,
        "bytes": size,
        "bytes_sent": view.sent,
        "seconds": round(view.seconds, 3),
        "throughput": round(view.rate),
    }
    return Outcome(summary_line(subject, size, view.seconds, view.sent), record, code=code)


async def _to_matterport(
    up: Uploader, dest: Destination, args: argparse.Namespace, infos: list[FileInfo]
) -> Sent:
    """All the files into one import session, which becomes one model."""
    assert dest.matterport is not None
    result = await dest.matterport.import_files(
        up,
        [i.path for i in infos],
        organization=dest.organization,
        name=args.name or infos[0].path.stem,
        description=args.description,
    )
    ids = remote_fields(result)
    fields: dict[str, Any] = {
        **ids,
        "files": [str(f.path) for f in result.files],
        "retries": sum(f.retries for f in result.files),
    }
    if result.skipped is not None:
        where = f"model {ids['model_id']} (session {ids['session_id']})"
        fields["already"] = already_line(where, result.skipped)
    return (
        f"matterport session {ids['session_id']} -> model {ids['model_id']}",
        result.bytes,
        fields,
        EXIT_OK,
    )


async def _send_files(
    up: Uploader, dest: Destination, args: argparse.Namespace, infos: list[FileInfo]
) -> Sent:
    """The files, ``--files-at-once`` at a time (Speckle, S3, the sandbox's blob store), a
    record each. One file's failure is raised as it is; of several, each is reported and the
    others go on."""
    import anyio

    kind = destination_kind(args.to)
    send = FILE_SENDERS[kind]
    records: list[Record | None] = [None] * len(infos)
    errors: dict[int, UploadError] = {}
    gate = anyio.Semaphore(args.files_at_once or 4)

    async def one(i: int, info: FileInfo) -> None:
        async with gate:
            try:
                records[i] = await send(up, dest, args, info)
            except UploadError as exc:
                errors[i] = exc

    async with anyio.create_task_group() as tg:
        for i, info in enumerate(infos):
            tg.start_soon(one, i, info)
    if len(infos) == 1 and errors:
        raise errors[0]
    for i, exc in errors.items():
        records[i] = {"path": str(infos[i].path), "status": "failed", "error": one_line(exc)}
    done = [r for r in records if r is not None and r["status"] != "failed"]
    fields: dict[str, Any] = {"files": records}
    lines = [r.pop("already") for r in done if "already" in r]
    if lines and len(lines) == len(records):  # every file: already uploaded
        many = f"{plural(len(lines), 'file')}, the last on {lines[-1].split(' on ')[-1]}"
        fields["already"] = lines[0] if len(lines) == 1 else f"{ALREADY}: {many}"
    return (
        _subject(kind, dest, args, done, len(errors)),
        sum(i.size for i in infos),
        fields,
        worst(exit_code_of(e) for e in errors.values()),
    )


def _subject(
    kind: Kind, dest: Destination, args: argparse.Namespace, done: list[Record], bad: int
) -> str:
    ok = len(done)
    last = done[-1] if done else None
    failed = f" ({bad} failed)" if bad else ""
    if kind == "speckle" and ok == 1 and not bad and last is not None:
        return (
            f"speckle project {last['project_id']} model {last['model_id']} "
            f"version {last['version_id']}"
        )
    if kind == "speckle":
        return f"speckle project {dest.project}: {plural(ok, 'new version')}{failed}"
    if dest.s3 is not None:
        where = f"s3://{dest.s3.bucket}/{dest.s3.key}"
    else:
        where = args.sandbox_dir or "a temporary sandbox (removed on exit)"
    return f"uploaded {plural(ok, 'file')} to {where}{failed}"


async def _speckle_file(
    up: Uploader, dest: Destination, args: argparse.Namespace, info: FileInfo
) -> Record:
    """A new version of the file's model."""
    assert dest.speckle is not None
    r = await dest.speckle.upload(
        up, info.path, project_id=dest.project, model_name=args.model, model_id=args.model_id
    )
    ids = remote_fields(r)
    record = {
        "path": str(info.path),
        "status": "ok",
        **{name: ids[name] for name in ("project_id", "model_id", "version_id")},
        "bytes": info.size,
        "seconds": round(r.seconds, 3),
    }
    if r.upload.skipped is not None:
        where = f"version {ids['version_id']} of model {ids['model_id']}"
        record.update(_skipped(where, r.upload.skipped))
    return record


async def _s3_file(
    up: Uploader, dest: Destination, args: argparse.Namespace, info: FileInfo
) -> Record:
    place = dest.s3
    assert place is not None
    r = await up.upload(info.path, place.target(info.path))
    key = place.key_for(info.path)
    record = {
        "path": str(info.path),
        "status": "ok",
        "bucket": place.bucket,
        "key": key,
        **remote_fields(r),
    }
    if r.skipped is not None:
        record.update(_skipped(f"s3://{place.bucket}/{key}", r.skipped))
    return record


async def _sandbox_file(
    up: Uploader, dest: Destination, args: argparse.Namespace, info: FileInfo
) -> Record:
    """A plain multipart upload into the sandbox's blob store."""
    from engine.cli.destinations import sandbox_target

    assert dest.sandbox is not None
    r = await up.upload(info.path, sandbox_target(dest.sandbox, info))
    return {
        "path": str(r.path),
        "status": "ok",
        "bytes": r.size,
        "parts": len(r.parts),
        **remote_fields(r),
    }


FILE_SENDERS: dict[Kind, FileSender] = {
    "speckle": _speckle_file,
    "s3": _s3_file,
    "sandbox": _sandbox_file,
}


# ---- already uploaded ------------------------------------------------------------------------


def already_line(where: str, skipped: Skipped) -> str:
    """``already uploaded: <where> on <when>; --force to upload again``."""
    when = "an earlier run"
    if skipped.since:
        try:
            when = datetime.fromisoformat(skipped.since).strftime("%Y-%m-%d %H:%M UTC")
        except ValueError:
            when = skipped.since
    return f"{skipped.reason}: {where} on {when}; --force to upload again"


def _skipped(where: str, skipped: Skipped) -> Record:
    """A file record's fields when it was not sent (``already``: its line, taken out again
    before the record is shown)."""
    return {"status": "skipped", "reason": skipped.reason, "already": already_line(where, skipped)}


def _named(to: str) -> str:
    return "s3" if to.startswith("s3://") else to
