"""``upload-engine import DIR --to PLATFORM``: every scan under a directory (resumable).

What is found, routed, checked and reported is ``engine.bulk``'s; this module runs it:
- all uploads share ONE ``Uploader`` (one limiter of ``--concurrency`` PUTs, one pool);
  ``--files-at-once`` bounds the files (or Matterport groups) in flight;
- the journal lives in the state directory (default ``DIR/.upload-engine``, mode 0700): a
  rerun skips finished files and resumes partial ones; it never holds tokens or URLs; a file
  the journal knows only with another size or mtime is restarted or refused (``--on-change``);
- first Ctrl-C: no new parts, parts in flight get up to ``--grace`` seconds (the exit comes
  as soon as they are done), the journal is consistent, exit 130 with how to resume; second
  Ctrl-C: stop at once;
- ``--dry-run`` prints the plan and sends nothing.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from anyio.abc import TaskGroup

from engine.bulk import Entry, Units, mark_unfinished, report, survey
from engine.cli.fanout import add_cluster_options, drain_when_lost, open_fanout
from engine.cli.options import (
    JOURNAL,
    TREE_DESTINATIONS,
    add_destination_options,
    add_engine_options,
    check_destination,
    engine_config,
    positive,
    view_mode,
    view_options,
)
from engine.cli.output import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Outcome,
    escape,
    exit_code_of,
    plural,
    remote_fields,
    worst,
)
from engine.cli.progress import ProgressView
from engine.cli.tables import print_table
from engine.cli.verbosity import http_trace, rank
from engine.errors import ConfigError, InterruptedUpload, UploadError
from engine.events import FileFailed
from engine.models import UploadResult
from engine.plan import plan_parts
from engine.redact import redact
from engine.units import human_bytes, human_rate

if TYPE_CHECKING:  # imported by the runner alone: parsing the command line needs neither
    from engine.cli.destinations import Destination
    from engine.client import Uploader

__all__ = ["register", "run_import"]


def register(p: argparse.ArgumentParser) -> None:
    """The arguments of ``import`` (its name and line in ``--help``: ``app.COMMANDS``)."""
    p.description = (
        "Find E57 and IFC files under DIR and upload them: .e57 to Matterport, .ifc to "
        "Speckle; or every file to s3://BUCKET/PREFIX/ (keys mirror the paths under DIR). "
        "Rerun the same command to resume after a crash or Ctrl-C."
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    add_destination_options(p, tree=True)
    p.add_argument("--include", action="append", default=[], metavar="GLOB")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    p.add_argument("--files-at-once", type=positive, default=None, metavar="N", help="default 4")
    p.add_argument("--group-by", choices=("file", "folder"), default="file")
    p.add_argument("--state-dir", type=Path, help="journal directory (default DIR/.upload-engine)")
    p.add_argument("--on-change", choices=("restart", "refuse"), default="restart")
    p.add_argument("--report", type=Path, metavar="FILE.json")
    p.add_argument("--dry-run", action="store_true", help="print the plan; send nothing")
    p.add_argument("--grace", type=float, default=5.0, help="seconds for parts in flight on Ctrl-C")
    add_engine_options(p)
    add_cluster_options(p)
    p.set_defaults(runner=run_import)


def _plan(args: argparse.Namespace) -> tuple[Path, list[Entry], Units]:
    """Find, route, check and group the files (blocking file-system work, no network)."""
    root: Path = args.dir
    if args.to not in TREE_DESTINATIONS and not args.to.startswith("s3://"):
        raise ConfigError(
            f"import takes --to {', '.join(TREE_DESTINATIONS)} or s3://BUCKET/PREFIX/, "
            f"not {args.to!r} (upload takes single files anywhere)"
        )
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory")
    root = root.absolute()
    state_dir: Path = (args.state_dir or root / ".upload-engine").absolute()
    entries, units = survey(
        root,
        to=args.to,
        state_dir=state_dir,
        journal=state_dir / JOURNAL,
        include=args.include,
        exclude=args.exclude,
        by_folder=args.group_by == "folder",
        model=args.model,
    )
    check_destination(args, files=2)  # a directory: S3 needs a prefix
    if not any(e.platform for e in entries if e.status != "skipped"):
        what = "files" if args.to.startswith("s3://") else "E57 or IFC files"
        raise ConfigError(f"{root}: no {what} to upload for --to {args.to}")
    if not args.dry_run:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        state_dir.chmod(0o700)
    return state_dir, entries, units


async def run_import(args: argparse.Namespace) -> Outcome:
    state_dir, entries, units = await anyio.to_thread.run_sync(_plan, args)
    if args.dry_run:
        return _dry_run(args, entries, units)
    started = time.monotonic()
    files = sum(len(es) for es in units.values())
    total = sum(e.size for es in units.values() for e in es)
    root = args.dir.resolve()
    kw = view_options(args)
    with ProgressView(
        view_mode(args), total_files=files, total_bytes=total, root=root, **kw
    ) as view:
        for e in entries:
            if e.status == "failed":
                view.print(f"{e.rel}: not uploaded: {e.reason}", "ERROR")
        interrupted = await _run_units(args, units, view, state_dir / JOURNAL)
    seconds = time.monotonic() - started
    result = report(entries, seconds, sent=view.sent)
    if view.workers:  # --cluster / --workers: the bytes each worker sent
        result["workers"] = view.workers
    if args.report:
        await anyio.Path(args.report).write_bytes(
            orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n"
        )
    _print_summary(args, entries, result["summary"], seconds)
    if interrupted:
        cmd = escape(" ".join(shlex.quote(a) for a in sys.argv))
        print(f"interrupted: the journal is saved; to resume, rerun:\n  {cmd}", file=sys.stderr)
    return Outcome("", result, code=EXIT_INTERRUPTED if interrupted else _exit_code(entries))


def _exit_code(entries: list[Entry]) -> int:
    """The table's code of the files' ends: a platform's refusal its own; a local refusal (a
    check, an unreadable directory: found before the transfer) is 2, as from ``upload``."""
    codes = [e.code if e.code is not None else EXIT_USAGE for e in entries if e.status == "failed"]
    codes += [EXIT_INTERRUPTED for e in entries if e.status == "interrupted"]
    return worst(codes)


# ---- running the units ---------------------------------------------------------------------


async def _run_units(
    args: argparse.Namespace, units: Units, view: ProgressView, journal: Path
) -> bool:
    """Upload every unit, ``--files-at-once`` at a time; return True when stopped by Ctrl-C."""
    from engine.cli.destinations import open_destination
    from engine.client import Uploader

    sandbox_dir = args.state_dir / "sandbox" if args.state_dir else None
    config, files = engine_config(args), [(e.path, e.size) for es in units.values() for e in es]
    async with (
        open_fanout(args, config, files, view) as sender,
        open_destination(args, sandbox_dir=sandbox_dir) as dest,
    ):
        trace = [http_trace(lambda m: view.print(m, "DEBUG"))] if rank(view.level) > 2 else []
        uploader = Uploader(
            config,
            on_event=view,
            journal=journal,
            on_change=args.on_change,
            trace_configs=trace,
            sender=sender,
            force=getattr(args, "force", False),
        )
        async with uploader as up:
            view.watch(lambda: up.connections)
            async with anyio.create_task_group() as tg:
                gate = anyio.Semaphore(args.files_at_once)

                async def one(entries: list[Entry]) -> None:
                    async with gate:
                        await _run_unit(up, dest, view, entries)

                tg.start_soon(_on_signals, up, view, args.grace, tg)
                tg.start_soon(drain_when_lost, sender, up, view)
                async with anyio.create_task_group() as work:
                    for entries in units.values():
                        work.start_soon(one, entries)
                # The work is over: end the signal watcher *and* a pending grace timer, which
                # would otherwise hold the exit for the whole grace period after a Ctrl-C.
                tg.cancel_scope.cancel()
            interrupted = up.stopping
    mark_unfinished((e for es in units.values() for e in es), "stopped before it finished")
    return interrupted


async def _on_signals(up: Uploader, view: ProgressView, grace: float, tg: TaskGroup) -> None:
    """First SIGINT/SIGTERM: drain, and cancel ``tg`` after ``grace`` seconds; second: now."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if up.stopping:
                tg.cancel_scope.cancel()
                return
            up.drain()
            view.print(f"stopping: parts in flight get {grace:g} s (Ctrl-C again to stop at once)")
            tg.start_soon(_cancel_after, grace, tg.cancel_scope)


async def _cancel_after(seconds: float, scope: anyio.CancelScope) -> None:
    await anyio.sleep(seconds)
    scope.cancel()


async def _run_unit(up: Uploader, dest: Destination, view: ProgressView, es: list[Entry]) -> None:
    started = time.monotonic()
    try:
        if es[0].platform == "matterport":
            await _import_session(up, dest, es, started)
        elif es[0].platform == "s3":
            await _s3_object(up, dest, es[0], started)
        else:
            await _speckle_file(up, dest, es[0], started)
    except InterruptedUpload as exc:
        for e in es:
            e.status, e.reason = "interrupted", str(exc)
    except UploadError as exc:
        for e in es:
            if e.status == "pending":
                e.status, e.reason = "failed", str(exc).splitlines()[0]
                e.code = exit_code_of(exc)
                if len(es) > 1:  # the engine reported one file; the rest of the group fails too
                    view(FileFailed(e.path, exc))
    except anyio.get_cancelled_exc_class():
        mark_unfinished(es, "stopped at once")
        raise


async def _import_session(up: Uploader, dest: Destination, es: list[Entry], started: float) -> None:
    """A Matterport unit: its files in one import session."""
    assert dest.matterport is not None
    result = await dest.matterport.import_files(
        up,
        [e.path for e in es],
        organization=dest.organization,
        name=es[0].path.stem if len(es) == 1 else Path(es[0].rel).parent.name or "scans",
    )
    ids = remote_fields(result)
    by_path = {str(r.path): r for r in result.files}
    for e in es:
        e.ids.update(ids)
        r = by_path.get(str(e.path.absolute()))
        _done(e, r, time.monotonic() - started, skipped=result.skipped is not None)


async def _speckle_file(up: Uploader, dest: Destination, e: Entry, started: float) -> None:
    """A Speckle unit: one file, a new version of its model."""
    assert dest.speckle is not None
    model = e.ids.pop("model_name", None)
    sp = await dest.speckle.upload(
        up, e.path, project_id=dest.project, model_name=str(model) if model else e.path.stem
    )
    e.ids.update(remote_fields(sp))
    _done(e, sp.upload, time.monotonic() - started)


async def _s3_object(up: Uploader, dest: Destination, e: Entry, started: float) -> None:
    """An S3 unit: one file, the object PREFIX + its path relative to DIR."""
    assert dest.s3 is not None
    r = await up.upload(e.path, dest.s3.target(e.path, e.rel))
    e.ids.update({"bucket": dest.s3.bucket, **remote_fields(r)})
    _done(e, r, time.monotonic() - started)


def _done(e: Entry, r: UploadResult | None, seconds: float, *, skipped: bool | None = None) -> None:
    """``e`` uploaded by ``r``; or, when ``skipped`` (default: ``r.skipped``), not sent at all
    because the destination confirmed it already had it (``--force`` sends it again)."""
    if skipped if skipped is not None else (r is not None and r.skipped is not None):
        e.status, e.reason = "skipped", "already uploaded"
        return
    e.status = "ok"
    e.seconds = r.seconds if r is not None and r.seconds > 0 else seconds
    e.retries = r.retries if r is not None else 0
    e.parts = len(r.parts) if r is not None else 0


# ---- output --------------------------------------------------------------------------------


def _print_summary(
    args: argparse.Namespace, entries: list[Entry], summary: dict[str, Any], seconds: float
) -> None:
    """The files not uploaded and the totals: on stdout, or on stderr with ``--json``."""
    out = sys.stderr if args.json else sys.stdout
    problems = [e for e in entries if e.status in ("failed", "interrupted", "skipped")]
    if problems and not args.json:
        rows = [(e.rel, e.status, e.reason) for e in problems]
        print_table(("file", "status", "reason"), rows, stream=out, title="not uploaded")
    headers = ("ok", "skipped", "failed", "interrupted", "bytes", "sent", "wall time", "rate")
    row = (
        *(str(summary[k]) for k in ("ok", "skipped", "failed", "interrupted")),
        human_bytes(summary["bytes"]),
        human_bytes(summary["bytes_sent"]),
        f"{seconds:.2f} s",
        human_rate(summary["throughput"]),
    )
    print_table(headers, [row], stream=out, right=range(len(headers)))


def _dry_run(args: argparse.Namespace, entries: list[Entry], units: Units) -> Outcome:
    """The plan, for people (on stderr with ``--json``, whose Result record holds it)."""
    out = sys.stderr if args.json else sys.stdout
    engine_config(args)  # the engine options are checked as a real run would
    rows = [
        (e.rel, str(e.platform), e.group.split(":", 1)[1], human_bytes(e.size), _parts(args, e))
        for es in units.values()
        for e in es
    ]
    print_table(
        ("file", "platform", "group", "size", "parts"),
        rows,
        stream=out,
        title=f"plan: upload to {args.to} (nothing sent)",
    )
    notes = []
    for e in entries:
        if e.status in ("skipped", "failed"):
            notes.append(f"{e.status}: {e.rel}: {e.reason}")
        elif e.changed:
            then = "restarted" if args.on_change == "restart" else "refused (--on-change refuse)"
            notes.append(f"changed since the last run: {e.rel}: {then}")
    if notes:
        out.write("\n".join(escape(redact(n)) for n in notes) + "\n")
    total = sum(e.size for es in units.values() for e in es)
    files = sum(len(es) for es in units.values())
    line = (
        f"{plural(files, 'file')} in {plural(len(units), 'upload')}, {human_bytes(total)}; "
        "nothing sent"
    )
    return Outcome(line, {"plan": [e.record() for e in entries], "bytes": total})


def _parts(args: argparse.Namespace, e: Entry) -> str:
    """How many parts a file will take: Speckle one PUT, S3 by its limits; Matterport decides
    its limits per file when asked."""
    if e.platform == "speckle":
        return "1"
    if e.platform == "s3":
        single = e.size <= args.part_size
        return "1" if single else str(len(plan_parts(e.size, part_size=args.part_size)))
    return "server decides"
