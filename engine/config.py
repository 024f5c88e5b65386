"""Frozen, validated configuration of one engine instance.

Units are bytes and seconds throughout. Peak memory of the data path is bounded by
``budget * effective_chunk * 4``, independent of part size and file size: over TLS a PUT
holds about four chunks at once (the chunk read, its encrypted copy, the part of it the
socket has not taken yet, and the next chunk being read), over plain HTTP two. The chunk
shrinks as the number of PUTs in flight grows, so that the bound stays within
``memory_budget``.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import ConfigError

__all__ = ["GiB", "KiB", "MiB", "UploadConfig"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
_MIN_CHUNK = 64 * KiB
_CHUNKS_HELD = 4  # per PUT over TLS, at most (see the module docstring)


@dataclass(frozen=True, kw_only=True, slots=True)
class UploadConfig:
    """How the engine moves bytes. Change per call with ``dataclasses.replace``.

    concurrency:     ``None`` (the default): adaptive; the engine starts with a few PUTs in
                     flight and adds more while the measured goodput still grows, backs off
                     on throttling and resets, never above ``max_concurrency``. An ``int``:
                     exactly that many PUTs in flight across every file of one ``Uploader``.
    max_concurrency: the adaptive engine's ceiling (``--max-concurrency``).
    part_size:       the largest part size wanted, in bytes: parts shrink (never below the
                     target's minimum) so that a file has enough parts to fill ``budget``
                     connections, grow when a file would need more parts than the target
                     allows, and are clamped to the target's limits.
    chunk_size:      the most bytes read, hashed and written per step of a PUT body (about
                     1 MiB keeps aiohttp from copying large first chunks); ``effective_chunk``
                     is smaller when ``memory_budget`` asks for it.
    memory_budget:   bytes of file data the data path may hold at once, over every PUT in
                     flight: each PUT reads chunks of its share of it (``chunk_for`` the
                     window of the moment; ``effective_chunk`` at the ceiling).
    data_loops:      what moves HTTPS bytes (TLS and hashing on several cores): ``None``, a
                     worker thread per PUT on blocking sockets (``engine.tlsthreads``); ``N``
                     > 1, N event loops in threads (``engine.loops``); ``1``, the caller's
                     loop. Plain HTTP always stays on the caller's loop (``sendfile(2)``
                     needs no more).
    max_attempts:    attempts per part (first try included) before the file fails.
    backoff_base:    first retry waits up to this many seconds (full jitter) ...
    backoff_cap:     ... doubling per attempt up to this cap.
    stall_timeout:   a PUT that makes no progress for this long is cancelled and retried.
    connect_timeout: seconds to open a connection.
    verify_etag:     compare each MD5-form ETag with the MD5 of the bytes sent; re-send on mismatch.
    verify_tls:      verify certificates of HTTPS endpoints (switching it off is the caller's risk).
    ca_bundle:       a PEM file of the certificate authorities to trust instead of the system's,
                     for every HTTPS endpoint (storage, control planes, S3 calls); ``None``: the
                     system's, with ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` honoured (and, for S3
                     calls, ``AWS_CA_BUNDLE`` or the profile's ``ca_bundle``).
    bwlimit:         bytes per second that one process sends at most, over all its PUTs
                     (``--bwlimit``; each cluster worker is capped on its own); ``None``: no cap.
    """

    concurrency: int | None = None
    max_concurrency: int = 64
    part_size: int = 64 * MiB
    chunk_size: int = 1 * MiB
    memory_budget: int = 32 * MiB
    data_loops: int | None = None
    max_attempts: int = 8
    backoff_base: float = 0.25
    backoff_cap: float = 20.0
    stall_timeout: float = 30.0
    connect_timeout: float = 30.0
    verify_etag: bool = True
    verify_tls: bool = True
    ca_bundle: str | None = None
    bwlimit: float | None = None

    def __post_init__(self) -> None:
        if self.concurrency is not None and not 1 <= self.concurrency <= 1024:
            raise ConfigError(f"concurrency must be between 1 and 1024, got {self.concurrency}")
        if not 1 <= self.max_concurrency <= 1024:
            raise ConfigError(
                f"max_concurrency must be between 1 and 1024, got {self.max_concurrency}"
            )
        if self.data_loops is not None and not 1 <= self.data_loops <= 64:
            raise ConfigError(f"data_loops must be between 1 and 64, got {self.data_loops}")
        if self.memory_budget < 4 * MiB:
            raise ConfigError(f"memory_budget must be at least 4 MiB, got {self.memory_budget}")
        if self.part_size < 1:
            raise ConfigError(f"part_size must be positive, got {self.part_size}")
        if not 4 * KiB <= self.chunk_size <= 64 * MiB:
            raise ConfigError(f"chunk_size must be between 4 KiB and 64 MiB, got {self.chunk_size}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.backoff_base < 0 or self.backoff_cap < self.backoff_base:
            raise ConfigError("backoff needs 0 <= backoff_base <= backoff_cap")
        if self.stall_timeout <= 0 or self.connect_timeout <= 0:
            raise ConfigError("stall_timeout and connect_timeout must be positive")
        if self.ca_bundle is not None and not self.ca_bundle.strip():
            raise ConfigError("ca_bundle must be the path of a PEM file of CA certificates")
        if self.bwlimit is not None and not self.bwlimit > 0:
            raise ConfigError(f"bwlimit must be a positive rate in bytes/s, got {self.bwlimit}")

    @property
    def adaptive(self) -> bool:
        """True when the engine chooses how many PUTs are in flight (``concurrency is None``)."""
        return self.concurrency is None

    @property
    def budget(self) -> int:
        """The most PUTs ever in flight: ``concurrency``, or ``max_concurrency`` when adaptive."""
        return self.max_concurrency if self.concurrency is None else self.concurrency

    @property
    def effective_chunk(self) -> int:
        """The chunk each PUT reads at a time: ``chunk_size``, shrunk (to a multiple of 64 KiB,
        not below it) so that ``budget`` PUTs hold at most ``memory_budget`` bytes."""
        return self.chunk_for(self.budget)

    def chunk_for(self, window: int) -> int:
        """The chunk of a PUT that starts while ``window`` PUTs may be in flight: the share of
        ``memory_budget`` of each of them (a multiple of 64 KiB, not below it, at most
        ``chunk_size``). While the window doubles, the PUTs begun before keep their larger
        chunks: the data path then holds up to 1.5 times the budget until they end."""
        share = self.memory_budget // (_CHUNKS_HELD * max(1, window))
        return max(_MIN_CHUNK, min(self.chunk_size, share // _MIN_CHUNK * _MIN_CHUNK))

    @property
    def memory_ceiling(self) -> int:
        """Upper bound in bytes of file data the data path holds at once."""
        return self.budget * self.effective_chunk * _CHUNKS_HELD
