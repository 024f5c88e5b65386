"""How the sandbox's Matterport Import API behaves: :class:`MatterportSandboxConfig`, and the
faults it injects.

Rules this module keeps:

* A config is an immutable, hashable value, checked when made (``ValueError`` saying why):
  credentials are non-empty pairs whose token id has no ``:``; at least one organization;
  ``0 <= min_part_size <= max_part_size``; ``1 <= max_parts <= 10000`` (S3's limit); a positive
  ``url_expiry``; no required part header that HTTP itself sets (``content-length``, ``host``,
  ``authorization``); ``fail_operations`` naming only root fields in :data:`OPERATIONS`.
* **Faults** (seeded, deterministic in call order): each root field call fails with
  ``error.internal`` with probability ``internal_error_rate``, and each name in
  ``fail_operations`` fails its next call (list a name twice to fail twice); the listed names are
  used up first. :class:`InjectedFaults` decides; the plane strikes before or after the effect.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Final

from engine.sandbox.blobstore import GiB, MiB

__all__ = ["ENDPOINT", "OPERATIONS", "InjectedFaults", "MatterportSandboxConfig"]

ENDPOINT: Final = "/api/import/graph"

OPERATIONS: Final = (
    "importSession",
    "listImportSessions",
    "importFilePartsUploadStatus",
    "addImportSession",
    "addE57Object",
    "beginUpload",
    "requestPartUpload",
    "completeUpload",
    "commitImportSession",
)
"""The root fields of the API, by the names ``calls`` and ``fail_operations`` use."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MatterportSandboxConfig:
    """How the sandbox's Import API behaves. Sizes in bytes, times in seconds.

    ``credentials``: accepted (token id, token secret) pairs for HTTP Basic auth.
    ``organizations``: organizationIds the tokens may import into.
    ``min_part_size`` / ``max_part_size`` / ``max_parts``: the part rules announced as
    ``minSize``/``maxSize`` and enforced at completeUpload (defaults: S3's). Keep the blob
    store's own minimum at or below ``min_part_size``.
    ``single_part``: upload each file as one part (``minSize == maxSize == file size``; files
    above ``max_part_size`` cannot be uploaded).
    ``part_headers``: extra (name, value) headers every part PUT must carry; returned in
    ``headers`` and signed into the URL, so the blob store refuses a PUT without them.
    ``url_expiry``: lifetime of each presigned URL.
    ``model_delay``: time from commit to ``modelId`` (at least the E57 check's duration).
    ``quota``: models per organization, None for no limit.
    ``idempotent_retries``: see the package docstring (state machine).
    ``internal_error_rate``, ``fail_operations``, ``fail_after_effect``, ``seed``: injected
    ``error.internal`` faults; ``seed`` also makes the generated ids reproducible.
    """

    credentials: tuple[tuple[str, str], ...] = (("sandbox-token-id", "sandbox-token-secret"),)
    organizations: frozenset[str] = frozenset({"sandbox-org"})
    min_part_size: int = 5 * MiB
    max_part_size: int = 5 * GiB
    max_parts: int = 10_000
    single_part: bool = False
    part_headers: tuple[tuple[str, str], ...] = ()
    url_expiry: float = 3600.0
    model_delay: float = 0.2
    quota: int | None = None
    idempotent_retries: bool = True
    internal_error_rate: float = 0.0
    fail_operations: tuple[str, ...] = ()
    fail_after_effect: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        # Accept any iterables, keep hashable values.
        object.__setattr__(self, "credentials", tuple(map(tuple, self.credentials)))
        object.__setattr__(self, "organizations", frozenset(self.organizations))
        object.__setattr__(self, "part_headers", tuple(map(tuple, self.part_headers)))
        object.__setattr__(self, "fail_operations", tuple(self.fail_operations))
        unknown = set(self.fail_operations) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"fail_operations names unknown operations: {sorted(unknown)}")
        if not self.credentials or any(not i or not s for i, s in self.credentials):
            raise ValueError("credentials needs at least one (token id, secret) pair, non-empty")
        if any(":" in token_id for token_id, _ in self.credentials):
            raise ValueError("a token id cannot contain ':' (HTTP Basic splits on it)")
        if not self.organizations:
            raise ValueError("organizations must not be empty")
        if not 0 <= self.min_part_size <= self.max_part_size or self.max_part_size < 1:
            raise ValueError("need 0 <= min_part_size <= max_part_size and max_part_size >= 1")
        if not 1 <= self.max_parts <= 10_000:
            raise ValueError("max_parts must be in 1..10000 (S3's limit)")
        if self.url_expiry <= 0 or self.model_delay < 0:
            raise ValueError("url_expiry must be > 0 and model_delay >= 0")
        if self.quota is not None and self.quota < 0:
            raise ValueError("quota must be >= 0 or None")
        if not 0.0 <= self.internal_error_rate <= 1.0:
            raise ValueError("internal_error_rate must be in [0, 1]")
        for name, _ in self.part_headers:
            if not name or name.strip().lower() in ("content-length", "host", "authorization"):
                raise ValueError(f"part header {name!r} cannot be required")


class InjectedFaults:
    """Decides which root field calls fail with an injected error.internal (seeded)."""

    def __init__(self, config: MatterportSandboxConfig) -> None:
        self.rate = config.internal_error_rate
        self.pending: Counter[str] = Counter(config.fail_operations)
        self.rng = random.Random(f"{config.seed}:matterport-faults")
        self.injected: Counter[str] = Counter()

    def strike(self, operation: str) -> bool:
        if self.pending[operation] > 0:
            self.pending[operation] -= 1
        elif not (self.rate > 0.0 and self.rng.random() < self.rate):
            return False
        self.injected[operation] += 1
        return True
