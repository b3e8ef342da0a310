"""Retrieval corpora: the task's own passage pool, or a folder of .txt / .md / .jsonl files."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from harness.errors import UserError
from harness.records import Document, Sample, stable_hash

SUFFIXES = (".txt", ".md", ".jsonl")
_PARA = re.compile(r"\n\s*\n")


def task_corpus(samples: Sequence[Sample]) -> list[Document]:
    """Every distinct passage (by id) of the task's samples, in order of first appearance, `is_gold` cleared."""
    seen: dict[str, Document] = {}
    for s in samples:
        for d in s.documents:
            if d.id not in seen:
                seen[d.id] = Document(id=d.id, text=d.text, title=d.title)
    return list(seen.values())


def folder_corpus(folder: str | Path, field: str = "retrieval.corpus") -> list[Document]:
    """Passages of a folder (recursively, sorted by path): a .txt/.md file gives one passage per paragraph (blank-line
    separated, id `path#n`); a .jsonl file one per line with `text` (and optional `id`, `title`)."""
    root = Path(folder).expanduser()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise UserError(f"{field}: '{folder}' holds no {', '.join(SUFFIXES)} files; point it at a folder of passages")
    docs: list[Document] = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        try:
            raw = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{field}: '{f}' is not UTF-8 text; convert it to UTF-8") from None
        if f.suffix.lower() == ".jsonl":
            for n, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    text = row["text"]
                except (ValueError, KeyError, TypeError):
                    raise UserError(f"{field}: {f} line {n} is not a JSON object with a 'text' field") from None
                did, title = str(row.get("id", f"{rel}#{n}")), str(row.get("title", ""))
                docs.append(Document(id=did, text=str(text), title=title))
        else:
            for n, para in enumerate(p.strip() for p in _PARA.split(raw)):
                if para:
                    docs.append(Document(id=f"{rel}#{n}", text=para, title=f.stem))
    return docs


def corpus_hash(docs: Sequence[Document]) -> str:
    """Content hash of a corpus (ids, titles and texts in order): part of every retrieval cache key."""
    return stable_hash([[d.id, d.title, d.text] for d in docs])[:16]


def passage_text(d: Document) -> str:
    """What a retriever indexes: the title and the text."""
    return f"{d.title}\n{d.text}" if d.title else d.text
