"""The Import API's sessions: finding them, their quota, and the model each one makes.

Rules this module keeps:

* **Sessions.** Session ids are 24 lowercase alphanumerics, file and object ids 25, model ids 11
  alphanumerics, all drawn from one ``random.Random`` seeded by ``seed``, so reproducible.
  An unknown session, or no file with that clientId in it, is ``not.found``.
* **Quota** (``quota``): the number of models an organization may have. A session counts once it
  is committed and until its check fails. addImportSession is refused once that many sessions
  produced (or are producing) a model, and so is a commit that would go over it
  (``quota.exceeded``).
* **The model.** ``modelId`` appears ``model_delay`` seconds after the commit, or once the E57
  check is done if that is later. A file that fails the check means no model, ever: ``modelId``
  stays null (the Import API has no field for the reason; clients must poll with a deadline) and
  the reason is kept in :attr:`ImportSessionRecord.failure` for tests. A check that crashed is a
  failure too. The result is applied lazily, when a read looks at the session.
"""

from __future__ import annotations

import random
import string
import time
from datetime import UTC, datetime
from typing import Final

from engine.sandbox.matterport.config import MatterportSandboxConfig
from engine.sandbox.matterport.errors import INVALID, NOT_FOUND, QUOTA_EXCEEDED, ApiError
from engine.sandbox.matterport.records import ImportFileRecord, ImportSessionRecord, Outcome

__all__ = ["ALNUM", "ALNUM_LOWER", "SessionBook", "now"]

ALNUM_LOWER: Final = string.ascii_lowercase + string.digits
ALNUM: Final = string.ascii_letters + string.digits


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class SessionBook:
    """The sessions of one plane (``sessions``: id → record) and the rules that read them."""

    def __init__(self, config: MatterportSandboxConfig) -> None:
        self.config = config
        self.sessions: dict[str, ImportSessionRecord] = {}
        self._ids = random.Random(f"{config.seed}:matterport-ids")

    def _new_id(self, length: int, alphabet: str) -> str:
        return "".join(self._ids.choice(alphabet) for _ in range(length))

    def _find_session(self, session_id: str) -> ImportSessionRecord:
        session = self.sessions.get(session_id)
        if session is None:
            raise ApiError(NOT_FOUND, f"No import session with id {session_id!r}")
        return session

    @staticmethod
    def _find_file(session: ImportSessionRecord, client_id: str) -> ImportFileRecord:
        file = session.files.get(client_id)
        if file is None:
            raise ApiError(
                NOT_FOUND,
                f"No file with clientId {client_id!r} in import session {session.id!r}"
                " (importFileId takes the file's clientId)",
            )
        return file

    @staticmethod
    def _require_open(session: ImportSessionRecord) -> None:
        if session.committed:
            raise ApiError(INVALID, f"import session {session.id!r} is already committed")

    @staticmethod
    def _require_started(file: ImportFileRecord, operation: str) -> None:
        if file.status == "PENDING":
            raise ApiError(
                INVALID, f"file {file.client_id!r} is PENDING: call beginUpload before {operation}"
            )
        if file.status == "COMPLETED":
            raise ApiError(INVALID, f"file {file.client_id!r} is already COMPLETED")

    def _check_quota(self, organization_id: str) -> None:
        quota = self.config.quota
        if quota is None:
            return
        used = 0
        for session in self.sessions.values():
            if session.organization_id == organization_id:
                self._apply_check(session)
                used += session.counts_against_quota
        if used >= quota:
            raise ApiError(
                QUOTA_EXCEEDED,
                f"Organization {organization_id!r} has used its quota of {quota} models",
            )

    def _apply_check(self, session: ImportSessionRecord) -> None:
        """Take a finished E57 check's result; make the model once ``model_delay`` has passed."""
        check = session.check
        if check is None or not check.done() or session.committed_at is None:
            return
        if time.monotonic() < session.committed_at + self.config.model_delay:
            return
        session.check = None
        try:
            outcome = check.result()
        except Exception as exc:  # a bug in the check itself: no model, say why
            outcome = Outcome({}, f"the E57 check crashed: {type(exc).__name__}: {exc}")
        for client_id, md5 in outcome.md5.items():
            session.files[client_id].md5 = md5
        if outcome.failure is not None:
            session.failure = outcome.failure
        else:
            session.model_id = self._new_id(11, ALNUM)
            session.modified = now()
