"""Terminal output for the CLI: tables drawn with `rich` to fit the terminal's width, plain text when piped."""

from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any, TextIO


def terminal_width(stream: TextIO | None = None, default: int = 120) -> int:
    """Columns of the terminal `stream` writes to; `COLUMNS` or `default` when it is not a terminal."""
    stream = stream or sys.stdout
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    try:
        if stream.isatty():
            return shutil.get_terminal_size((default, 24)).columns
    except (AttributeError, ValueError):
        pass
    return default


def table_text(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None,
               width: int | None = None, numeric: Sequence[str] = (), no_wrap: Sequence[str] = ()) -> str:
    """A rich table as text at most `width` columns wide (the terminal's by default): long cells wrap or fold.

    `numeric` columns are right-aligned; `no_wrap` columns are never wrapped (ids), the others share the rest.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    width = width or terminal_width()
    t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left",
              collapse_padding=True, padding=(0, 1))
    for h in headers:
        keep = h in no_wrap
        t.add_column(h, justify="right" if h in numeric else "left", no_wrap=keep, overflow="fold",
                     min_width=max(len(h), max((len(str(r[len(t.columns)])) for r in rows), default=0)) if keep
                     else None)
    for r in rows:
        t.add_row(*("-" if v is None else str(v) for v in r))
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, highlight=False, markup=False, emoji=False,
            force_terminal=False, soft_wrap=False).print(t)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], **kw: Any) -> None:
    """Print `table_text` to stdout."""
    print(table_text(headers, rows, **kw))
