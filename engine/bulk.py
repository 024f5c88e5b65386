"""``upload-engine import DIR``: a directory of scans into Matterport or Speckle.

Rules:
- discovery is recursive and never follows a symlinked directory (so a symlink loop cannot
  trap it); ``--include``/``--exclude`` globs match the path relative to DIR;
- routing is by extension: ``.e57`` -> Matterport, ``.ifc`` -> Speckle; anything else is
  listed as skipped with the reason, and so is a scan bound for the other platform;
- every routed file is checked before anything is sent (a readable regular file, non-empty,
  the format's header, within the platform's size limit); a file that fails the check is
  reported as failed with the reason and the others still go;
- all uploads share ONE ``Uploader`` (one limiter of ``--concurrency`` PUTs, one pool);
  ``--files-at-once`` bounds the files (or Matterport groups) in flight;
- the journal lives in the state directory (default ``DIR/.upload-engine``, mode 0700): a
  rerun skips finished files and resumes partial ones; it never holds tokens or URLs; a file
  the journal knows only with another size or mtime is reported as changed, then restarted
  or refused (``--on-change``);
- first Ctrl-C: no new parts, parts in flight get up to ``--grace`` seconds (the exit comes
  as soon as they are done), the journal is consistent, exit 130 with how to resume; second
  Ctrl-C: stop at once.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import orjson
from rich.console import Console
from rich.table import Table

from engine.cli import Outcome, add_engine_options, engine_config, view_mode
from engine.client import Uploader
from engine.config import GiB
from engine.errors import ConfigError, InputError, InterruptedUpload, UploadError
from engine.events import FileFailed
from engine.formats import check_e57, check_ifc
from engine.journal import FileState, replay
from engine.plan import plan_parts
from engine.progress import ProgressView, human_bytes, human_rate
from engine.providers.matterport import Matterport, MatterportCredentials
from engine.providers.speckle import Speckle, SpeckleCredentials
from engine.redact import redact

__all__ = ["Entry", "discover", "register"]

Platform = Literal["matterport", "speckle"]
Status = Literal["ok", "skipped", "failed", "interrupted", "pending"]
ROUTES: dict[str, Platform] = {".e57": "matterport", ".ifc": "speckle"}
SPECKLE_LIMIT = 5 * GiB
EXIT_INTERRUPTED = 130
JOURNAL = "journal.jsonl"


@dataclass
class Entry:
    """One file found under DIR, and what became of it."""

    path: Path
    rel: str
    size: int = 0
    platform: Platform | None = None
    group: str = ""
    status: Status = "pending"
    reason: str = ""
    ids: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    retries: int = 0
    parts: int = 0
    mtime_ns: int = 0
    changed: bool = False  # the journal knows this path only with another size or mtime

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": str(self.path),
            "status": self.status,
            "platform": self.platform,
            "bytes": self.size,
        }
        if self.group:
            out["group"] = self.group
        if self.changed:
            out["changed"] = True
        out.update(self.ids)
        if self.status == "ok":
            out["seconds"] = round(self.seconds, 3)
            out["throughput"] = round(self.size / self.seconds) if self.seconds > 0 else 0
            out["retries"] = self.retries
        if self.reason:
            out["error" if self.status != "skipped" else "reason"] = redact(self.reason)
        return out


# ----------------------------------------------------------------------------------------------
# Discovery and checks (no network)


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def discover(
    root: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = (), state_dir: Path
) -> list[Entry]:
    """Every file under ``root`` (sorted), routed or skipped with a reason."""
    entries: list[Entry] = []
    state = state_dir.absolute()

    def walk(directory: Path) -> None:
        try:
            with os.scandir(directory) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            rel = directory.relative_to(root).as_posix() or "."
            entries.append(Entry(directory, rel, status="skipped", reason=_os_reason(exc)))
            return
        for item in items:
            path = Path(item.path)
            rel = path.relative_to(root).as_posix()
            if path.absolute() == state:
                continue
            if item.is_dir(follow_symlinks=False):
                walk(path)
                continue
            if item.is_symlink() and _is_dir_link(path):
                entries.append(
                    Entry(path, rel, status="skipped", reason="symlinked directory not followed")
                )
                continue
            entries.append(_classify(path, rel, include, exclude))

    walk(root)
    return entries


def _is_dir_link(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _os_reason(exc: OSError) -> str:
    if exc.errno == 40:  # ELOOP
        return "symlink loop"
    return exc.strerror or str(exc)


def _classify(path: Path, rel: str, include: Sequence[str], exclude: Sequence[str]) -> Entry:
    entry = Entry(path, rel)
    if include and not _matches(rel, include):
        entry.status, entry.reason = "skipped", "not matched by --include"
        return entry
    if exclude and _matches(rel, exclude):
        entry.status, entry.reason = "skipped", "matched by --exclude"
        return entry
    platform = ROUTES.get(path.suffix.lower())
    if platform is None:
        entry.status, entry.reason = "skipped", f"not a scan ({path.suffix or 'no extension'})"
        return entry
    entry.platform = platform
    try:
        st = path.stat()
    except OSError as exc:
        entry.status, entry.reason = "failed", _os_reason(exc)
        return entry
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the header check; a device, worse
        entry.status, entry.reason = "failed", "not a regular file"
        return entry
    entry.size, entry.mtime_ns = st.st_size, st.st_mtime_ns
    return entry


def check(entry: Entry, *, speckle_limit: int = SPECKLE_LIMIT) -> None:
    """Mark ``entry`` failed (with the reason) if it cannot be uploaded as it is."""
    if entry.status != "pending":
        return
    if entry.size == 0:
        entry.status, entry.reason = "failed", "empty file"
        return
    if entry.platform == "speckle" and entry.size > speckle_limit:
        entry.status, entry.reason = (
            "failed",
            f"{human_bytes(entry.size)} is above Speckle's {human_bytes(speckle_limit)} limit",
        )
        return
    try:
        (check_e57 if entry.platform == "matterport" else check_ifc)(entry.path)
    except InputError as exc:
        entry.status, entry.reason = "failed", str(exc).removeprefix(f"{entry.path}: ")
    except OSError as exc:
        entry.status, entry.reason = "failed", _os_reason(exc)


def mark_changed(entries: list[Entry], states: Mapping[str, FileState]) -> None:
    """Flag files the journal has seen only with another size or mtime: a rerun restarts
    them (or refuses them, with ``--on-change refuse``); either way the user is told."""
    seen: dict[str, list[Mapping[str, Any]]] = {}
    for st in states.values():
        path = st.fingerprint.get("path")
        if isinstance(path, str):
            seen.setdefault(path, []).append(st.fingerprint)
    for e in entries:
        known = seen.get(str(e.path))
        if e.status == "pending" and known:
            e.changed = not any(
                fp.get("size") == e.size and fp.get("mtime_ns") == e.mtime_ns for fp in known
            )


def route_to(entries: list[Entry], to: str) -> None:
    """Skip files whose platform is not the destination (even unreadable ones: they would
    not have been sent anyway, so they must not fail this run)."""
    if to == "sandbox":
        return
    for e in entries:
        if e.status in ("pending", "failed") and e.platform is not None and e.platform != to:
            e.status = "skipped"
            e.reason = f"{e.path.suffix} files go to {e.platform}, not {to}"
            e.platform = None


def group(entries: list[Entry], *, by_folder: bool, model: str | None) -> dict[str, list[Entry]]:
    """Work units: a Matterport import session (one file, or a folder) or a Speckle file."""
    units: dict[str, list[Entry]] = {}
    for e in entries:
        if e.status != "pending":
            continue
        if e.platform == "matterport":
            folder = str(Path(e.rel).parent)
            e.group = f"matterport:{folder}" if by_folder else f"matterport:{e.rel}"
        else:
            e.group = f"speckle:{e.rel}"
            if model:
                e.ids["model_name"] = model
        units.setdefault(e.group, []).append(e)
    return units


# ----------------------------------------------------------------------------------------------
# The command


def register(sub: Any) -> None:
    p = sub.add_parser(
        "import",
        help="upload every scan under a directory (resumable)",
        description="Find E57 and IFC files under DIR and upload them: .e57 to Matterport, "
        ".ifc to Speckle. Rerun the same command to resume after a crash or Ctrl-C.",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument(
        "--to",
        required=True,
        choices=("matterport", "speckle", "sandbox"),
        help="sandbox: an in-process sandbox of both platforms",
    )
    p.add_argument("--include", action="append", default=[], metavar="GLOB")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    p.add_argument("--files-at-once", type=int, default=4, metavar="N")
    p.add_argument("--group-by", choices=("file", "folder"), default="file")
    p.add_argument("--organization", help="Matterport organization id")
    p.add_argument("--endpoint", help="Matterport Import API endpoint URL")
    p.add_argument("--project", help="Speckle project id")
    p.add_argument("--model", help="Speckle model name for every file (default: each file's stem)")
    p.add_argument("--server", help="Speckle server URL")
    p.add_argument("--state-dir", type=Path, help="journal directory (default DIR/.upload-engine)")
    p.add_argument("--on-change", choices=("restart", "refuse"), default="restart")
    p.add_argument("--report", type=Path, metavar="FILE.json")
    p.add_argument("--dry-run", action="store_true", help="print the plan; send nothing")
    p.add_argument("--grace", type=float, default=5.0, help="seconds for parts in flight on Ctrl-C")
    p.add_argument("--sandbox-faults", default="", metavar="SPEC", help=argparse.SUPPRESS)
    add_engine_options(p)
    p.set_defaults(runner=run_import)


def _usage(args: argparse.Namespace, units: dict[str, list[Entry]]) -> None:
    if args.files_at_once < 1:
        raise ConfigError("--files-at-once must be at least 1")
    if args.to == "speckle" and not args.project:
        raise ConfigError("--project is required for --to speckle")
    if args.to == "matterport" and not args.organization:
        raise ConfigError("--organization is required for --to matterport")


def _plan(args: argparse.Namespace) -> tuple[Path, list[Entry], dict[str, list[Entry]]]:
    """Find, route, check and group the files (blocking file-system work, no network)."""
    root: Path = args.dir
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory")
    root = root.absolute()
    state_dir: Path = (args.state_dir or root / ".upload-engine").absolute()
    entries = discover(root, include=args.include, exclude=args.exclude, state_dir=state_dir)
    route_to(entries, args.to)
    for e in entries:
        check(e)
    journal = state_dir / JOURNAL
    if journal.is_file():
        mark_changed(entries, replay(journal.read_bytes().splitlines()))
    units = group(entries, by_folder=args.group_by == "folder", model=args.model)
    _usage(args, units)
    if not any(e.platform for e in entries if e.status != "skipped"):
        raise ConfigError(f"{root}: no E57 or IFC files to upload for --to {args.to}")
    if not args.dry_run:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        state_dir.chmod(0o700)
    return state_dir, entries, units


async def run_import(args: argparse.Namespace) -> Outcome:
    state_dir, entries, units = await anyio.to_thread.run_sync(_plan, args)
    if args.dry_run:
        return _dry_run(args, entries, units)
    started = time.monotonic()
    total = sum(e.size for es in units.values() for e in es)
    interrupted = False
    with ProgressView(
        view_mode(args), total_files=sum(len(es) for es in units.values()), total_bytes=total
    ) as view:
        for e in entries:
            if e.status == "failed":
                view.print(f"{e.rel}: not uploaded: {e.reason}")
        for e in entries:
            if e.changed and e.platform == "matterport" and args.on_change == "restart":
                # (the engine says so itself for Speckle files, whose journal key is the file's)
                view.print(f"{e.rel}: changed since the last run: uploading it from the start")
        interrupted = await _run_units(args, units, view, state_dir / JOURNAL)
    seconds = time.monotonic() - started
    report = _report(entries, seconds)
    if args.report:
        await anyio.Path(args.report).write_bytes(
            orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n"
        )
    _print_summary(args, entries, seconds)
    if interrupted:
        cmd = " ".join(shlex.quote(a) for a in sys.argv)
        print(f"interrupted: the journal is saved; to resume, rerun:\n  {cmd}", file=sys.stderr)
    failed = any(e.status == "failed" for e in entries)
    code = EXIT_INTERRUPTED if interrupted else (1 if failed else 0)
    return Outcome("", report if args.json else {}, failed=failed, code=code)


async def _run_units(
    args: argparse.Namespace,
    units: dict[str, list[Entry]],
    view: ProgressView,
    journal: Path,
) -> bool:
    """Upload every unit; return True when stopped by Ctrl-C."""
    interrupted = False
    async with _destinations(args) as dest:
        uploader = Uploader(
            engine_config(args), on_event=view, journal=journal, on_change=args.on_change
        )
        async with uploader as up, anyio.create_task_group() as tg:
            gate = anyio.Semaphore(args.files_at_once)

            async def one(entries: list[Entry]) -> None:
                async with gate:
                    await _run_unit(up, dest, args, entries)

            async def on_signals() -> None:
                nonlocal interrupted
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        if not interrupted:
                            interrupted = True
                            up.engine.drain()
                            view.print(
                                f"stopping: parts in flight get {args.grace:g} s "
                                "(Ctrl-C again to stop at once)"
                            )
                            tg.start_soon(_cancel_after, args.grace, tg.cancel_scope)
                        else:
                            tg.cancel_scope.cancel()
                            return

            async with anyio.create_task_group() as work:
                tg.start_soon(on_signals)
                for entries in units.values():
                    work.start_soon(one, entries)
            # The work is over: end the signal watcher *and* a pending grace timer, which
            # would otherwise hold the exit for the whole grace period after a Ctrl-C.
            tg.cancel_scope.cancel()
    for es in units.values():
        for e in es:
            if e.status == "pending":
                e.status, e.reason = "interrupted", "stopped before it finished"
    return interrupted


async def _cancel_after(seconds: float, scope: anyio.CancelScope) -> None:
    await anyio.sleep(seconds)
    scope.cancel()


async def _run_unit(up: Uploader, dest: Any, args: argparse.Namespace, es: list[Entry]) -> None:
    started = time.monotonic()
    try:
        if es[0].platform == "matterport":
            result = await dest.matterport.import_files(
                up,
                [e.path for e in es],
                organization=dest.organization,
                name=es[0].path.stem if len(es) == 1 else Path(es[0].rel).parent.name or "scans",
            )
            by_path = {str(r.path): r for r in result.files}
            for e in es:
                r = by_path.get(str(e.path.absolute()))
                e.ids.update(session_id=result.session_id, model_id=result.model_id)
                _done(e, r, time.monotonic() - started)
        else:
            [e] = es
            sp = await dest.speckle.upload(
                up,
                e.path,
                project_id=dest.project,
                model_name=e.ids.pop("model_name", None) or e.path.stem,
            )
            e.ids.update(
                project_id=sp.project_id,
                model_id=sp.model_id,
                version_id=sp.version_id,
                ingestion_id=sp.ingestion_id,
            )
            _done(e, sp.upload, time.monotonic() - started)
    except InterruptedUpload as exc:
        for e in es:
            e.status, e.reason = "interrupted", str(exc)
    except UploadError as exc:
        for e in es:
            if e.status == "pending":
                e.status, e.reason = "failed", str(exc).splitlines()[0]
                if len(es) > 1:  # the engine reported one file; the rest of the group fails too
                    up.engine.emit(FileFailed(e.path, exc))
    except anyio.get_cancelled_exc_class():
        for e in es:
            if e.status == "pending":
                e.status, e.reason = "interrupted", "stopped at once"
        raise


def _done(e: Entry, r: Any, seconds: float) -> None:
    e.status = "ok"
    e.seconds = r.seconds if r is not None and r.seconds > 0 else seconds
    e.retries = r.retries if r is not None else 0
    e.parts = len(r.parts) if r is not None else 0


class _Dest:
    def __init__(self) -> None:
        self.matterport: Any = None
        self.speckle: Any = None
        self.organization = ""
        self.project = ""


@asynccontextmanager
async def _destinations(args: argparse.Namespace) -> AsyncIterator[_Dest]:
    """The platforms to talk to: real ones (credentials from the environment or the
    credentials file), or both planes of an in-process sandbox."""
    from engine.commands import read_credentials, sandbox, sandbox_matterport, sandbox_speckle

    dest = _Dest()
    if args.to == "sandbox":
        data_dir = args.state_dir / "sandbox" if args.state_dir else None
        running = sandbox(data_dir, args.sandbox_faults)
        sb = await running.__aenter__()
        try:
            dest.matterport, dest.organization = sandbox_matterport(sb, args.organization)
            dest.speckle, dest.project = sandbox_speckle(sb, args.project)
            yield dest
        finally:
            with anyio.CancelScope(shield=True):  # a second Ctrl-C still closes the server
                await running.__aexit__(None, None, None)
        return
    if args.to == "matterport":
        kw = {"endpoint": args.endpoint} if args.endpoint else {}
        dest.matterport = Matterport(read_credentials(MatterportCredentials.from_env), **kw)
        dest.organization = args.organization
    else:
        kw = {"server": args.server} if args.server else {}
        dest.speckle = Speckle(read_credentials(SpeckleCredentials.from_env), **kw)
        dest.project = args.project
    yield dest


# ----------------------------------------------------------------------------------------------
# Output


def _report(entries: list[Entry], seconds: float) -> dict[str, Any]:
    ok = [e for e in entries if e.status == "ok"]
    sent = sum(e.size for e in ok)
    return {
        "files": [e.record() for e in entries],
        "summary": {
            "ok": len(ok),
            "skipped": sum(e.status == "skipped" for e in entries),
            "failed": sum(e.status == "failed" for e in entries),
            "interrupted": sum(e.status == "interrupted" for e in entries),
            "bytes": sent,
            "seconds": round(seconds, 3),
            "throughput": round(sent / seconds) if seconds > 0 else 0,
        },
    }


def _print_summary(args: argparse.Namespace, entries: list[Entry], seconds: float) -> None:
    console = Console(file=sys.stderr if args.json else sys.stdout, highlight=False)
    problems = [e for e in entries if e.status in ("failed", "interrupted", "skipped")]
    if problems and not args.json:
        t = Table(title="not uploaded", title_justify="left", show_edge=False)
        for col in ("file", "status", "reason"):
            t.add_column(col, overflow="fold")
        for e in problems:
            t.add_row(e.rel, e.status, redact(e.reason))
        console.print(t)
    s = _report(entries, seconds)["summary"]
    t = Table(show_edge=False)
    for col in ("ok", "skipped", "failed", "interrupted", "bytes", "wall time", "throughput"):
        t.add_column(col, justify="right")
    t.add_row(
        str(s["ok"]),
        str(s["skipped"]),
        str(s["failed"]),
        str(s["interrupted"]),
        human_bytes(s["bytes"]),
        f"{seconds:.2f} s",
        human_rate(s["throughput"]),
    )
    console.print(t)


def _dry_run(
    args: argparse.Namespace, entries: list[Entry], units: dict[str, list[Entry]]
) -> Outcome:
    console = Console(highlight=False)
    t = Table(title=f"plan: upload to {args.to} (nothing sent)", title_justify="left")
    for col in ("file", "platform", "group", "size", "parts (est.)"):
        t.add_column(col, overflow="fold")
    cfg = engine_config(args)
    for es in units.values():
        for e in es:
            single = e.platform == "speckle"
            parts = 1 if single else len(plan_parts(e.size, part_size=cfg.part_size))
            t.add_row(
                e.rel, str(e.platform), e.group.split(":", 1)[1], human_bytes(e.size), str(parts)
            )
    console.print(t)
    for e in entries:
        if e.status in ("skipped", "failed"):
            console.print(f"{e.status}: {e.rel}: {e.reason}", markup=False)
        elif e.changed:
            then = "restarted" if args.on_change == "restart" else "refused (--on-change refuse)"
            console.print(f"changed since the last run: {e.rel}: {then}", markup=False)
    total = sum(e.size for es in units.values() for e in es)
    files = sum(len(es) for es in units.values())
    line = f"{files} file(s) in {len(units)} upload(s), {human_bytes(total)}; nothing sent"
    return Outcome(line, {"plan": [e.record() for e in entries], "bytes": total})
