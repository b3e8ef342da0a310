"""Cheap model identities and metadata, computed without loading weights.

GGUF metadata (chat template, context length) and file sha256 are computed once per
file and remembered in the harness cache, keyed by the file's path, size and mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from harness.backends import packs


def _memo_path(kind: str, path: Path) -> Path:
    st = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    return packs.cache_dir() / "meta" / f"{kind}-{tag}.json"


def _memo(kind: str, path: Path, compute) -> dict[str, Any]:
    mp = _memo_path(kind, path)
    if mp.exists():
        return json.loads(mp.read_text())
    data = compute()
    mp.parent.mkdir(parents=True, exist_ok=True)
    tmp = mp.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(mp)
    return data


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised (pack files use their verified digest)."""
    for alias, pack in packs.PACKS.items():
        if path.resolve() == packs.gguf_path(alias).resolve() and packs.is_present(alias):
            return pack.sha256
    return _memo("sha256", path, lambda: {"sha256": packs.sha256_file(path)})["sha256"]


def gguf_metadata(path: Path) -> dict[str, Any]:
    """Architecture, context length and chat template of a GGUF file (memoised)."""

    def compute() -> dict[str, Any]:
        from gguf import GGUFReader

        fields = GGUFReader(str(path)).fields

        def get(key: str) -> Any:
            f = fields.get(key)
            if f is None:
                return None
            return f.contents()

        arch = get("general.architecture")
        ctx = get(f"{arch}.context_length")
        return {
            "architecture": arch,
            "context_length": int(ctx) if ctx is not None else None,
            "chat_template": get("tokenizer.chat_template"),
        }

    return _memo("gguf", path, compute)


def template_hash(template: str | None) -> str:
    return hashlib.sha256(template.encode()).hexdigest()[:16] if template else "none"


def folder_revision(folder: Path) -> str:
    """Content identity of a local HF folder: config + weight file names and sizes + tokenizer files."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            h.update(p.name.encode())
            if p.suffix in {".json", ".jinja", ".txt", ".model"} and p.stat().st_size < 50_000_000:
                h.update(p.read_bytes())
            else:
                h.update(str(p.stat().st_size).encode())
    return "folder:" + h.hexdigest()[:16]


def folder_chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    cfg = folder / "tokenizer_config.json"
    if cfg.exists():
        t = json.loads(cfg.read_text()).get("chat_template")
        return json.dumps(t) if isinstance(t, list) else t
    return None


def folder_context_length(folder: Path) -> int | None:
    cfg = folder / "config.json"
    if not cfg.exists():
        return None
    c = json.loads(cfg.read_text())
    c = c.get("text_config", c)
    return c.get("max_position_embeddings") or c.get("n_positions") or c.get("max_sequence_length")
