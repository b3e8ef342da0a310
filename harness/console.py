"""Terminal output for the CLI: tables drawn with `rich` to fit the terminal's width, plain text when piped."""

from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any, TextIO

PIPE_WIDTH = 1000  # not a terminal: one table row a line, however wide (grep-friendly)


def terminal_width(stream: TextIO | None = None, default: int = PIPE_WIDTH) -> int:
    """Columns of the terminal `stream` writes to; `COLUMNS`, else `default` when it is not a terminal."""
    stream = stream or sys.stdout
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    try:
        if stream.isatty():
            return shutil.get_terminal_size((120, 24)).columns
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
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False, markup=False,
                      emoji=False, force_terminal=False, soft_wrap=False)
    # ids and numbers keep their width (headers fold first), other text may wrap down to 16 characters; when even
    # that cannot fit, rich shares the width out (folding, never cropping a column)
    content = [max((len(str(r[k])) for r in rows), default=0) for k in range(len(headers))]
    least = [max(len(h), c) if h in no_wrap else c if h in numeric else min(c, 16)
             for h, c in zip(headers, content, strict=True)]

    def build(keep: bool) -> Table:
        t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left",
                  collapse_padding=True, padding=(0, 1))
        for k, h in enumerate(headers):
            t.add_column(h, justify="right" if h in numeric else "left", no_wrap=keep and h in no_wrap,
                         overflow="fold", min_width=least[k] if keep else None)
        for r in rows:
            t.add_row(*("-" if v is None else str(v) for v in r))
        return t

    def longest_word(k: int) -> int:
        return max(len(w) for text in [headers[k], *(str(r[k]) for r in rows)] for w in [*text.split(), ""])

    need = sum(max(least[k], longest_word(k)) for k in range(len(headers))) + 2 * len(headers)
    console.print(build(need <= width))
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())  # type: ignore[attr-defined]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], **kw: Any) -> None:
    """Print `table_text` to stdout."""
    print(table_text(headers, rows, **kw))


def _md_cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_tables_as_text(text: str, width: int | None = None) -> str:
    """`text` with each markdown table (a `| a | b |` header, a `|---|` rule, rows) drawn by `table_text`; numeric
    columns right-aligned, the first column never wrapped. Other lines pass through."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        is_table = lines[i].lstrip().startswith("|") and i + 1 < len(lines)
        if is_table and set(lines[i + 1].replace("|", "").replace(":", "").strip()) == {"-"}:
            headers = _md_cells(lines[i])
            j = i + 2
            rows = []
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                rows.append((_md_cells(lines[j]) + [""] * len(headers))[: len(headers)])
                j += 1
            numeric = [h for k, h in enumerate(headers) if rows and all(_numeric(r[k]) for r in rows)]
            out.append(table_text(headers, rows, width=width, numeric=numeric, no_wrap=headers[:1]))
            i = j
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out)


def _numeric(cell: str) -> bool:
    c = cell.replace(",", "").replace("%", "").strip()
    if c in ("-", ""):
        return True
    try:
        float(c.split()[0])
    except ValueError:
        return False
    return True
