"""What ``upload-engine import DIR`` does with a directory, before and after sending: find the
files, route, check and group them, and build the report. No network, no printing, no
arguments (the command itself is ``engine.cli.import_``).

Rules:
- discovery is recursive and never follows a symlinked directory (so a symlink loop cannot
  trap it); ``--include``/``--exclude`` globs match the path relative to DIR;
- routing is by extension: ``.e57`` -> Matterport, ``.ifc`` -> Speckle; anything else is
  listed as skipped with the reason, and so is a scan bound for the other platform; to S3
  (``s3://BUCKET/PREFIX/``) every file goes, whatever its type, under the key PREFIX + its
  path relative to DIR;
- every routed file is checked before anything is sent (a readable regular file, non-empty,
  the format's header, within the platform's size limit); a file that fails the check is
  reported as failed with the reason and the others still go;
- a file the journal knows only with another size or mtime is marked as changed;
- work units: a Matterport import session (one file, or a folder's files), a Speckle file
  or an S3 object.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.errors import InputError
from engine.formats import check_e57, check_ifc
from engine.journal import FileState, replay
from engine.models import MAX_PUT_SIZE, FileInfo
from engine.redact import redact
from engine.units import human_bytes

__all__ = [
    "ROUTES",
    "SPECKLE_LIMIT",
    "Entry",
    "Units",
    "check",
    "discover",
    "group",
    "mark_changed",
    "mark_unfinished",
    "report",
    "route_to",
    "survey",
]

Platform = Literal["matterport", "speckle", "s3"]
Status = Literal["ok", "skipped", "failed", "interrupted", "pending"]
ROUTES: dict[str, Platform] = {".e57": "matterport", ".ifc": "speckle"}
SPECKLE_LIMIT = MAX_PUT_SIZE  # one PUT holds the whole file


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
    ids: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0
    retries: int = 0
    parts: int = 0
    mtime_ns: int = 0
    fingerprint: dict[str, object] = field(default_factory=dict)  # as the journal keeps it
    changed: bool = False  # the journal knows this file only with another fingerprint
    code: int | None = None  # the exit code of a failure seen while sending (None: a check's)

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


Units = dict[str, list[Entry]]  # the work units, by group name


# ----------------------------------------------------------------------------------------------
# Discovery and checks (no network)


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def discover(
    root: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    state_dir: Path,
    to: str = "sandbox",
) -> list[Entry]:
    """Every file under ``root`` (sorted), routed or skipped with a reason (to an
    ``s3://`` destination: every file, as ``s3``)."""
    entries: list[Entry] = []
    state = state_dir.absolute()

    everything = to.startswith("s3://")

    def walk(directory: Path) -> None:
        try:
            with os.scandir(directory) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:  # scans that could not be read are a failure, not a skip
            rel = directory.relative_to(root).as_posix() or "."
            reason = f"cannot read this directory: {_os_reason(exc)}"
            entries.append(Entry(directory, rel, status="failed", reason=reason))
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
            entries.append(_classify(path, rel, include, exclude, everything=everything))

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


def _classify(
    path: Path, rel: str, include: Sequence[str], exclude: Sequence[str], *, everything: bool
) -> Entry:
    entry = Entry(path, rel)
    if include and not _matches(rel, include):
        entry.status, entry.reason = "skipped", "not matched by --include"
        return entry
    if exclude and _matches(rel, exclude):
        entry.status, entry.reason = "skipped", "matched by --exclude"
        return entry
    platform: Platform | None = "s3" if everything else ROUTES.get(path.suffix.lower())
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
    entry.fingerprint = FileInfo.from_stat(path.resolve(), st).fingerprint
    return entry


def check(entry: Entry, *, speckle_limit: int = SPECKLE_LIMIT) -> None:
    """Mark ``entry`` failed (with the reason) if it cannot be uploaded as it is."""
    if entry.status != "pending" or entry.platform == "s3":  # any file, even empty, is an object
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
    """Flag files the journal has seen only with another fingerprint (size, mtime, ctime,
    inode, by resolved path): a rerun restarts them (or refuses them, with
    ``--on-change refuse``); either way the user is told."""
    seen: dict[str, list[Mapping[str, Any]]] = {}
    for st in states.values():
        path = st.fingerprint.get("path")
        if isinstance(path, str):
            seen.setdefault(path, []).append(st.fingerprint)
    for e in entries:
        known = seen.get(str(e.fingerprint.get("path", "")))
        if e.status == "pending" and known:
            e.changed = e.fingerprint not in known


def route_to(entries: list[Entry], to: str) -> None:
    """Skip files whose platform is not the destination (even unreadable ones: they would
    not have been sent anyway, so they must not fail this run)."""
    if to == "sandbox" or to.startswith("s3://"):
        return
    for e in entries:
        if e.status in ("pending", "failed") and e.platform is not None and e.platform != to:
            e.status = "skipped"
            e.reason = f"{e.path.suffix} files go to {e.platform}, not {to}"
            e.platform = None


def group(entries: list[Entry], *, by_folder: bool, model: str | None) -> Units:
    """Work units: a Matterport import session (one file, or a folder) or a Speckle file."""
    units: Units = {}
    for e in entries:
        if e.status != "pending":
            continue
        if e.platform == "matterport":
            folder = str(Path(e.rel).parent)
            e.group = f"matterport:{folder}" if by_folder else f"matterport:{e.rel}"
        elif e.platform == "s3":
            e.group = f"s3:{e.rel}"
        else:
            e.group = f"speckle:{e.rel}"
            if model:
                e.ids["model_name"] = model
        units.setdefault(e.group, []).append(e)
    return units


def survey(
    root: Path,
    *,
    to: str,
    state_dir: Path,
    journal: Path,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    by_folder: bool = False,
    model: str | None = None,
) -> tuple[list[Entry], Units]:
    """Every file under ``root``, routed to ``to`` and checked (changed ones marked from the
    ``journal``, when there is one), and the work units of those left to send."""
    entries = discover(root, include=include, exclude=exclude, state_dir=state_dir, to=to)
    route_to(entries, to)
    for e in entries:
        check(e)
    if journal.is_file():
        mark_changed(entries, replay(journal.read_bytes().splitlines()))
    return entries, group(entries, by_folder=by_folder, model=model)


# ----------------------------------------------------------------------------------------------
# The report


def report(entries: list[Entry], seconds: float, sent: int | None = None) -> dict[str, Any]:
    """The run's report: each file's record and the summary. ``bytes`` counts the files
    uploaded; ``bytes_sent`` what this run sent of them (parts stored before excluded), which
    ``throughput`` is the rate of."""
    ok = [e for e in entries if e.status == "ok"]
    size = sum(e.size for e in ok)
    sent = size if sent is None else sent
    return {
        "files": [e.record() for e in entries],
        "summary": {
            "ok": len(ok),
            "skipped": sum(e.status == "skipped" for e in entries),
            "failed": sum(e.status == "failed" for e in entries),
            "interrupted": sum(e.status == "interrupted" for e in entries),
            "bytes": size,
            "bytes_sent": sent,
            "seconds": round(seconds, 3),
            "throughput": round(sent / seconds) if seconds > 0 else 0,
        },
    }


def mark_unfinished(entries: Iterable[Entry], reason: str) -> None:
    """Files still pending when their run stopped become interrupted, with ``reason``."""
    for e in entries:
        if e.status == "pending":
            e.status, e.reason = "interrupted", reason
