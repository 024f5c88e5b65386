"""The blob store's counters: what ``BlobStore.stats()`` reports and ``reset_stats()`` zeroes.

Rules this module keeps:

* Counters belong to the event loop thread, like the rest of the store's metadata.
* Resetting zeroes every counter but ``puts_in_flight`` (those PUTs are still running);
  ``max_puts_in_flight`` restarts from the PUTs in flight now.
* The report is JSON-serialisable, its mappings sorted by key, and its keys always in the same
  order (``Counters.report`` then the store's own ``uploads_*``/``parts_stored``/``objects``/
  ``discard`` and the storage mode's ``mode`` (and ``kms_key_id`` in ``kms`` mode)).

The keys: ``requests``: blob HTTP requests; ``responses``: by status; ``errors``: by error code;
``bytes_received``: body bytes read (including drained and cut-off bodies); ``bytes_stored``:
bytes of accepted parts and objects; ``faults``: injected, by kind; ``puts_by_part``: ``{key:
{part_number: attempts}}`` for PUTs that passed the checks; ``disconnects``: bodies cut short
(client gone, or a ``reset``/``stall`` fault); ``puts_in_flight`` / ``max_puts_in_flight``: PUTs
past the checks whose answer is not yet sent (now, and the most at once).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Counters"]


@dataclass
class Counters:
    """Blob HTTP traffic and storage counters since start or the last :meth:`reset`."""

    requests: int = 0
    bytes_received: int = 0
    bytes_stored: int = 0
    responses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    puts: Counter[tuple[str, int]] = field(default_factory=Counter)
    completed: int = 0
    disconnects: int = 0
    puts_in_flight: int = 0
    max_puts_in_flight: int = 0

    def reset(self) -> None:
        self.requests = 0
        self.bytes_received = 0
        self.bytes_stored = 0
        self.responses.clear()
        self.errors.clear()
        self.faults.clear()
        self.puts.clear()
        self.completed = 0
        self.disconnects = 0
        self.max_puts_in_flight = self.puts_in_flight

    def put_started(self) -> None:
        self.puts_in_flight += 1
        self.max_puts_in_flight = max(self.max_puts_in_flight, self.puts_in_flight)

    def put_finished(self) -> None:
        self.puts_in_flight -= 1

    def report(self) -> dict[str, Any]:
        """The traffic part of ``BlobStore.stats()``, in its order."""
        puts: dict[str, dict[str, int]] = {}
        for (key, part), count in sorted(self.puts.items()):
            puts.setdefault(key, {})[str(part)] = count
        return {
            "requests": self.requests,
            "responses": {str(status): n for status, n in sorted(self.responses.items())},
            "errors": dict(sorted(self.errors.items())),
            "bytes_received": self.bytes_received,
            "bytes_stored": self.bytes_stored,
            "faults": dict(sorted(self.faults.items())),
            "puts_by_part": puts,
            "disconnects": self.disconnects,
            "puts_in_flight": self.puts_in_flight,
            "max_puts_in_flight": self.max_puts_in_flight,
        }
