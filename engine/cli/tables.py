"""Tables for people: drawn by rich on a terminal; plain, aligned text elsewhere (no box
drawing, never wrapped or cut, one row per line), since a pipe or a log is read by grep and
``--json`` is the interface for programs. Cells are redacted and control characters escaped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO

from engine.cli.output import escape
from engine.redact import redact

__all__ = ["print_table"]


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    stream: IO[str],
    title: str = "",
    right: Sequence[int] = (),
) -> None:
    """``rows`` under ``headers`` on ``stream``; columns in ``right`` aligned right."""
    cells = [[escape(redact(str(c))) for c in row] for row in rows]
    if stream.isatty():
        _rich(headers, cells, stream, title, right)
        return
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [title] if title else []
    for row in [list(headers), *cells]:
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(padded).rstrip())
    stream.write("\n".join(lines) + "\n")
    stream.flush()


def _rich(
    headers: Sequence[str],
    cells: list[list[str]],
    stream: IO[str],
    title: str,
    right: Sequence[int],
) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title or None, title_justify="left", show_edge=False)
    for i, h in enumerate(headers):
        table.add_column(h, justify="right" if i in right else "left", overflow="fold")
    for row in cells:
        table.add_row(*(Text(c) for c in row))  # text, never markup
    Console(file=stream, highlight=False).print(table)
