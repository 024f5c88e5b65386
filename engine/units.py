"""Sizes and rates as people read them (shared by the directory logic and the CLI's views).

One unit system: binary (KiB, MiB, GiB = 1024**n bytes), for sizes and rates alike, as rclone
and the progress bars show them."""

from __future__ import annotations

__all__ = ["human_bytes", "human_rate"]


def human_bytes(n: float) -> str:
    """``6442450944`` -> ``"6.0 GiB"``; bytes below 1 KiB as a whole number."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_rate(bytes_per_second: float) -> str:
    """``104857600`` -> ``"100.0 MiB/s"`` (binary, like ``human_bytes``)."""
    return f"{human_bytes(bytes_per_second)}/s"
