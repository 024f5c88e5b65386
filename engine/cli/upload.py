"""``upload-engine upload FILE... --to DEST``: files to one destination (resumable, except into
a fresh in-process sandbox)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engine.cli.destinations import Destination, open_destination, sandbox_target
from engine.cli.options import (
    DESTINATIONS,
    JOURNAL,
    Kind,
    add_destination_options,
    add_engine_options,
    check_destination,
    destination_kind,
    engine_config,
    state_dir_default,
    view_mode,
)
from engine.cli.output import Outcome, rate, remote_fields, summary_line
from engine.cli.progress import progress_for
from engine.client import Uploader
from engine.models import FileInfo

__all__ = ["register", "run_upload"]

#: what a destination's sender returns: the summary's subject, the bytes sent, and the
#: destination's own fields of the JSON record
Sent = tuple[str, int, dict[str, Any]]
Record = dict[str, Any]  # one file's part of the JSON record
FileSender = Callable[[Uploader, Destination, argparse.Namespace, FileInfo], Awaitable[Record]]


def register(sub: Any) -> None:  # argparse's _SubParsersAction is private
    up = sub.add_parser(
        "upload",
        help="upload files to one destination",
        description="Upload files. Destinations: " + DESTINATIONS,
    )
    up.add_argument("files", nargs="+", metavar="FILE")
    add_destination_options(up, tree=False)
    up.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="resume journal (default ~/.local/state/upload-engine)",
    )
    add_engine_options(up)
    up.set_defaults(runner=run_upload)


async def run_upload(args: argparse.Namespace) -> Outcome:
    infos = [FileInfo.of(p) for p in args.files]
    check_destination(args, files=len(infos))
    send = _to_matterport if destination_kind(args.to) == "matterport" else _send_files
    started = time.monotonic()
    with progress_for(view_mode(args), files=len(infos), total=sum(i.size for i in infos)) as view:
        async with open_destination(args, sandbox_dir=args.sandbox_dir) as dest:
            state_dir: Path = args.state_dir or state_dir_default()
            journal = state_dir / JOURNAL if dest.resumable else None
            async with Uploader(engine_config(args), on_event=view, journal=journal) as up:
                subject, size, fields = await send(up, dest, args, infos)
    seconds = time.monotonic() - started
    record = {
        "destination": "s3" if args.to.startswith("s3://") else args.to,
        **fields,
        "bytes": size,
        "seconds": round(seconds, 3),
        "throughput": rate(size, seconds),
    }
    return Outcome(summary_line(subject, size, seconds), record)


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
    return (
        f"matterport session {ids['session_id']} -> model {ids['model_id']}",
        result.bytes,
        {
            **ids,
            "files": [str(f.path) for f in result.files],
            "retries": sum(f.retries for f in result.files),
        },
    )


async def _send_files(
    up: Uploader, dest: Destination, args: argparse.Namespace, infos: list[FileInfo]
) -> Sent:
    """The files one by one (Speckle, S3, the sandbox's blob store), a record each."""
    kind = destination_kind(args.to)
    records = [await FILE_SENDERS[kind](up, dest, args, info) for info in infos]
    if kind == "speckle":
        last = records[-1]
        subject = (
            f"speckle project {last['project_id']} model {last['model_id']} "
            f"version {last['version_id']}"
        )
    elif dest.s3 is not None:
        subject = f"uploaded {len(infos)} file(s) to s3://{dest.s3.bucket}/{dest.s3.key}"
    else:
        where = args.sandbox_dir or "a temporary sandbox (removed on exit)"
        subject = f"uploaded {len(infos)} file(s) to {where}"
    return subject, sum(i.size for i in infos), {"files": records}


async def _speckle_file(
    up: Uploader, dest: Destination, args: argparse.Namespace, info: FileInfo
) -> Record:
    """A new version of the file's model."""
    assert dest.speckle is not None
    r = await dest.speckle.upload(
        up, info.path, project_id=dest.project, model_name=args.model, model_id=args.model_id
    )
    ids = remote_fields(r)
    return {
        "path": str(info.path),
        **{name: ids[name] for name in ("project_id", "model_id", "version_id")},
        "bytes": info.size,
        "seconds": round(r.seconds, 3),
    }


async def _s3_file(
    up: Uploader, dest: Destination, args: argparse.Namespace, info: FileInfo
) -> Record:
    place = dest.s3
    assert place is not None
    r = await up.upload(info.path, place.target(info.path))
    key = place.key_for(info.path)
    return {"path": str(info.path), "bucket": place.bucket, "key": key, **remote_fields(r)}


async def _sandbox_file(
    up: Uploader, dest: Destination, args: argparse.Namespace, info: FileInfo
) -> Record:
    """A plain multipart upload into the sandbox's blob store."""
    assert dest.sandbox is not None
    r = await up.upload(info.path, sandbox_target(dest.sandbox, info))
    return {"path": str(r.path), "bytes": r.size, "parts": len(r.parts), **remote_fields(r)}


FILE_SENDERS: dict[Kind, FileSender] = {
    "speckle": _speckle_file,
    "s3": _s3_file,
    "sandbox": _sandbox_file,
}
