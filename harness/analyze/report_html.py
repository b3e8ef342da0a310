"""The report as one self-contained HTML file: the markdown rendered with markdown-it (tables on), every plot
inlined (its SVG as a base64 data URI, the PNG when there is no SVG), a small inline stylesheet, no external URLs.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.5rem; overflow-x: auto; white-space: pre-wrap; font-size: 0.8rem; }
code { font-size: 0.9em; }
details { margin: 0.2rem 0 0.5rem; }
summary { cursor: pointer; color: #444; }
"""

_IMG = re.compile(r'<img src="([^"]+)"')
_MIME = {".svg": "image/svg+xml", ".png": "image/png"}


def _data_uri(folder: Path, src: str) -> str | None:
    """A data URI for the plot `src` in `folder` (its .svg preferred); None for a remote or missing file."""
    if "://" in src or src.startswith("data:"):
        return None
    p = folder / src
    for q in (p.with_suffix(".svg"), p):
        if q.suffix in _MIME and q.is_file():
            return f"data:{_MIME[q.suffix]};base64," + base64.b64encode(q.read_bytes()).decode("ascii")
    return None


def markdown_to_html(md: str, folder: Path, title: str) -> str:
    """The report's markdown as a standalone HTML page, its local images (relative to `folder`) inlined."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    body = _IMG.sub(lambda m: f'<img src="{_data_uri(folder, html.unescape(m.group(1))) or m.group(1)}"', body)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def write_html(md_path: Path, title: str) -> Path:
    """Write `report.html` beside the markdown file `md_path` (its plots inlined); returns its path."""
    md_path = Path(md_path)
    out = md_path.with_suffix(".html")
    out.write_text(markdown_to_html(md_path.read_text(), md_path.parent, title), encoding="utf-8")
    return out
