"""Part planning: pure functions, no I/O.

Invariants of every plan returned by ``plan_parts``:
- part numbers are 1, 2, ..., n with no gaps;
- ranges are contiguous and cover ``[0, size)`` exactly (a zero-byte file is one empty part);
- every part is at most ``limits.max_size``; every part but the last is at least
  ``limits.min_size``; all parts but the last have the same size;
- there are at most ``limits.max_parts`` parts; a ``single`` target gets exactly one;
- with ``fill=n`` a file has at least ``n`` parts where the part size may shrink that far
  (in whole MiB, never below ``FILL_FLOOR`` nor ``limits.min_size``): enough parts to keep
  ``n`` connections busy, without parts so small that their requests (and, on Matterport,
  a URL round trip each) cost more than their bytes.
"""

from __future__ import annotations

from engine.errors import ConfigError, TooLargeError
from engine.models import PartLimits, PartSpec

__all__ = ["FILL_FLOOR", "S3_LIMITS", "choose_part_size", "plan_parts"]

S3_LIMITS = PartLimits()
_MiB = 1024 * 1024
#: filling connections never shrinks a part below this
FILL_FLOOR = 8 * _MiB


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def choose_part_size(
    size: int, preferred: int, limits: PartLimits = S3_LIMITS, *, fill: int = 1
) -> int:
    """The part size for a file of ``size`` bytes: ``preferred``, shrunk (to a whole MiB, not
    below ``limits.min_size``) until the file has ``fill`` parts, clamped to the limits, and
    grown (to a whole MiB where the limits allow) when the file would need too many parts."""
    if limits.min_size < 0 or limits.max_size < 1 or limits.min_size > limits.max_size:
        raise ConfigError(f"invalid part limits: min {limits.min_size}, max {limits.max_size}")
    if limits.max_parts < 1:
        raise ConfigError(f"invalid part limits: max_parts {limits.max_parts}")
    if size > limits.max_size * limits.max_parts:
        raise TooLargeError(
            f"{size} bytes need more than {limits.max_parts} parts of at most "
            f"{limits.max_size} bytes; the target cannot hold this file"
        )
    if fill > 1 and size > 0:
        share = _ceil_div(_ceil_div(size, fill), _MiB) * _MiB
        preferred = min(preferred, max(share, FILL_FLOOR))
    part = min(max(preferred, limits.min_size, 1), limits.max_size)
    if size > 0 and _ceil_div(size, part) > limits.max_parts:
        needed = _ceil_div(size, limits.max_parts)
        rounded = _ceil_div(needed, _MiB) * _MiB
        part = rounded if rounded <= limits.max_size else needed
    return part


def plan_parts(
    size: int, *, part_size: int, limits: PartLimits = S3_LIMITS, fill: int = 1
) -> list[PartSpec]:
    """Split ``size`` bytes into parts (see the module invariants)."""
    if size < 0:
        raise ConfigError(f"file size must be >= 0, got {size}")
    if limits.single or size == 0:
        if size > limits.max_size:
            raise TooLargeError(
                f"{size} bytes exceed the {limits.max_size}-byte limit of a single upload"
            )
        return [PartSpec(1, 0, size)]
    part = choose_part_size(size, part_size, limits, fill=fill)
    count = _ceil_div(size, part)
    return [PartSpec(i + 1, i * part, min(part, size - i * part)) for i in range(count)]
