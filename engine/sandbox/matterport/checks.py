"""The Import API's checks: which completeUpload to accept, and the E57 check at commit.

Rules this module keeps:

* **completeUpload** takes the ETags positionally (entry *k* is part *k*, S3 part *k + 1*), each
  entry carrying exactly one non-empty ``ETag`` header, quotes optional. Every listed part must
  be stored with that ETag, every part but the last at least ``minSize``, none above
  ``maxSize``, and the sizes must add up to the declared file size; the first violation is a
  ``request.invalid`` naming the part (and, for an ETag of another part, which one).
* **The commit check** runs in one worker thread (:class:`CheckRunner`): each assembled file is
  checked as E57 (header, XML section, every page CRC) and its MD5 recorded, file by file; the
  first failure ends the run and means no model. A file with nothing on disk (discard mode) is
  not checked; its MD5 is the store's. Stopping the runner abandons a running check (the
  session then fails: the sandbox shut down before the model was made).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread

from engine.sandbox.blobstore import StoredPart
from engine.sandbox.e57 import E57Error, validate_e57
from engine.sandbox.matterport.errors import INVALID, ApiError
from engine.sandbox.matterport.records import FileCheck, Outcome

__all__ = ["CheckRunner", "check_completion", "etag_of", "normalize_etag", "run_checks"]


def normalize_etag(etag: str) -> str:
    """An ETag without surrounding whitespace, quotes or a weak prefix, lower-cased."""
    value = etag.strip()
    value = value.removeprefix("W/")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value.strip().lower()


def etag_of(index: int, entry: Mapping[str, Any]) -> str:
    """The ETag of ``completedParts[index]``."""
    values = [h["value"] for h in entry["headers"] if h["key"].strip().lower() == "etag"]
    if len(values) != 1 or not values[0].strip():
        raise ApiError(
            INVALID,
            f"completedParts[{index}] must carry exactly one non-empty ETag header"
            ' ({key: "ETag", value: "<etag>"})',
        )
    return str(values[0])


def check_completion(
    etags: Sequence[str],
    stored: Mapping[int, StoredPart],
    *,
    file_size: int,
    min_size: int,
    max_size: int,
) -> list[tuple[int, str]]:
    """Decide a completeUpload: ETag *k* is for zero-based part *k* (S3 part *k + 1*).

    ``stored`` maps S3 part numbers to what the blob store holds. Returns the ``(S3 part number,
    stored ETag)`` list to complete with, or raises ApiError(request.invalid) for the first fault.
    """
    if not etags:
        raise ApiError(INVALID, "completedParts is empty: list one entry per uploaded part")
    parts = _listed_parts(etags, stored)  # first: is each listed part there, with that ETag?
    _check_sizes(parts, file_size=file_size, min_size=min_size, max_size=max_size)
    listed = [(part.number, part.etag) for part in parts]
    return listed


def _listed_parts(etags: Sequence[str], stored: Mapping[int, StoredPart]) -> list[StoredPart]:
    by_etag = {normalize_etag(p.etag): number - 1 for number, p in stored.items()}
    parts: list[StoredPart] = []
    for index, etag in enumerate(etags):
        part = stored.get(index + 1)
        if part is None:
            raise ApiError(
                INVALID,
                f"completedParts[{index}]: part {index} was never uploaded"
                " (completedParts lists parts in order, one entry per part, starting at part 0)",
            )
        if normalize_etag(etag) != normalize_etag(part.etag):
            other = by_etag.get(normalize_etag(etag))
            hint = (
                f"; it is the ETag of part {other}: list completedParts in part order"
                if other is not None
                else ""
            )
            raise ApiError(
                INVALID,
                f"completedParts[{index}]: ETag {etag!r} does not match the ETag of the stored"
                f" part {index}{hint}",
            )
        parts.append(part)
    return parts


def _check_sizes(
    parts: Sequence[StoredPart], *, file_size: int, min_size: int, max_size: int
) -> None:
    """Do the sizes obey the part rules and add up to the file?"""
    last = len(parts) - 1
    for index, part in enumerate(parts):
        if part.size > max_size:
            raise ApiError(INVALID, f"part {index} is {part.size} bytes, above maxSize {max_size}")
        if index < last and part.size < min_size:
            raise ApiError(
                INVALID,
                f"part {index} is {part.size} bytes, below minSize {min_size}; only the last"
                " part may be smaller",
            )
    total = sum(part.size for part in parts)
    if total != file_size:
        raise ApiError(
            INVALID,
            f"parts 0..{last} hold {total} bytes but the file was declared as {file_size} bytes",
        )


# --------------------------------------------------------------------------------------------------
# The E57 check (worker thread; touches only its arguments).


class _Stopped(Exception):
    """The plane is closing: abandon the E57 check."""


def run_checks(checks: Sequence[FileCheck], stop: threading.Event) -> Outcome:
    """Check each file in turn; the first failure ends the run (no model)."""
    md5s: dict[str, str] = {}
    for check in checks:
        label = f"{check.name} (clientId {check.client_id})"
        if check.path is None:
            if check.stored_md5:
                md5s[check.client_id] = check.stored_md5
            continue
        try:
            md5 = _check_file(check.path, stop)
        except E57Error as exc:
            return Outcome(md5s, f"{label} is not a valid E57 file: {exc.reason}")
        except _Stopped:
            return Outcome(md5s, "the sandbox shut down before the model was made")
        except OSError as exc:
            return Outcome(md5s, f"{label} could not be read: {exc}")
        md5s[check.client_id] = md5
        if check.stored_md5 and check.stored_md5 != md5:
            return Outcome(
                md5s,
                f"{label}: the blob store reported MD5 {check.stored_md5} but the object on disk"
                f" has {md5}",
            )
    return Outcome(md5s, None)


def _check_file(path: Path, stop: threading.Event) -> str:
    """Validate ``path`` as E57 and return its MD5 hex; _Stopped once ``stop`` is set."""
    digest = hashlib.md5(usedforsecurity=False)

    def on_chunk(view: memoryview) -> None:
        if stop.is_set():
            raise _Stopped
        digest.update(view)

    validate_e57(path, on_chunk=on_chunk)
    return digest.hexdigest()


class CheckRunner:
    """Runs commit checks, one at a time, in one worker thread started on first use."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, checks: Sequence[FileCheck]) -> Future[Outcome]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="matterport-e57")
        return self._executor.submit(run_checks, tuple(checks), self._stop)

    async def aclose(self) -> None:
        """Abandon running checks and wait for the worker thread to stop (quick)."""
        self._stop.set()
        executor, self._executor = self._executor, None
        if executor is not None:
            await anyio.to_thread.run_sync(
                partial(executor.shutdown, wait=True, cancel_futures=True)
            )
