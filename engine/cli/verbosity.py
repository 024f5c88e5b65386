"""How much the command line says: ``-q``, ``-v``, ``-vv`` and ``--log-level``, as rclone has them.

Levels, each showing what the one before it shows and more:

- ``ERROR`` (``-q``): failures, the error line and the final line only; no bars;
- ``NOTICE`` (the default): each file started and done, resumes, changes, a progress line at
  least every 10 s when the output is not a terminal (bars when it is);
- ``INFO`` (``-v``): every retry and every control-plane phase, each line with its time;
- ``DEBUG`` (``-vv``): every HTTP request of the engine (method, redacted URL, status, time).

Lines for people go to stderr; ``--json`` keeps stdout for JSON lines alone.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Literal

from engine.errors import ConfigError
from engine.redact import redact_url

if TYPE_CHECKING:
    import aiohttp

__all__ = ["LEVELS", "Level", "add_global_options", "http_trace", "level_of", "rank"]

Level = Literal["ERROR", "NOTICE", "INFO", "DEBUG"]
LEVELS: tuple[Level, ...] = ("ERROR", "NOTICE", "INFO", "DEBUG")


def rank(level: Level) -> int:
    """0 for ``ERROR`` up to 3 for ``DEBUG``."""
    return LEVELS.index(level)


def add_global_options(parser: argparse.ArgumentParser, *, sub: bool) -> None:
    """``-q``, ``-v``, ``--log-level`` and ``--config-profile``, on the main parser and (with
    ``sub``) on each command's, so they may come before or after the command's name."""
    keep = argparse.SUPPRESS if sub else None
    g = parser.add_argument_group("output and configuration")
    g.add_argument(
        "-q", "--quiet", action="store_true", default=keep or False,
        help="only errors and the final line",
    )  # fmt: skip
    g.add_argument(
        "-v", "--verbose", action="count", default=keep or 0,
        help="-v: retries and phases, with times; -vv: also every HTTP request (redacted)",
    )  # fmt: skip
    g.add_argument(
        "--log-level", type=str.upper, choices=LEVELS, default=keep, metavar="LEVEL",
        help="ERROR, NOTICE (default), INFO (-v) or DEBUG (-vv)",
    )  # fmt: skip
    g.add_argument(
        "--config-profile", default=keep, metavar="NAME",
        help="profile of the config file (default: $UPLOAD_ENGINE_PROFILE, else default)",
    )  # fmt: skip


def level_of(args: argparse.Namespace) -> Level:
    """The level the flags (or, without them, ``log_level`` from env/config) ask for."""
    quiet, verbose = bool(getattr(args, "quiet", False)), int(getattr(args, "verbose", 0) or 0)
    if quiet and verbose:
        raise ConfigError("give -q or -v, not both")
    if quiet:
        return "ERROR"
    if verbose:
        return "DEBUG" if verbose > 1 else "INFO"
    level = getattr(args, "log_level", None) or "NOTICE"
    return level if level in LEVELS else "NOTICE"


def http_trace(say: Callable[[str], None]) -> aiohttp.TraceConfig:
    """An aiohttp trace that tells ``say`` about every request: ``HTTP PUT URL -> 200 (12
    ms)``, the URL without its query (where signatures live); headers are never shown."""
    import aiohttp

    trace = aiohttp.TraceConfig()

    async def start(_: object, ctx: SimpleNamespace, params: object) -> None:
        ctx.started = time.monotonic()

    def took(ctx: SimpleNamespace) -> str:
        return f"{(time.monotonic() - getattr(ctx, 'started', time.monotonic())) * 1000:.0f} ms"

    async def end(_: object, ctx: SimpleNamespace, p: aiohttp.TraceRequestEndParams) -> None:
        say(f"HTTP {p.method} {redact_url(str(p.url))} -> {p.response.status} ({took(ctx)})")

    async def failed(
        _: object, ctx: SimpleNamespace, p: aiohttp.TraceRequestExceptionParams
    ) -> None:
        why = type(p.exception).__name__
        say(f"HTTP {p.method} {redact_url(str(p.url))} -> {why} ({took(ctx)})")

    trace.on_request_start.append(start)
    trace.on_request_end.append(end)
    trace.on_request_exception.append(failed)
    trace.freeze()
    return trace
