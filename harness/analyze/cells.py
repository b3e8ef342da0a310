"""Short cell ids and cell references: what `harness cells` lists and every command that takes a cell accepts.

A cell's short id is the start of the SHA-1 of its cell id, as long as the store needs for every cell's to be
unique (at least `MIN_SHORT` hex digits). A reference to a cell is its full id, a prefix of its full id, or a
prefix of its short id (hash); it must match exactly one cell, else a `UserError` names the candidates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import pandas as pd

from harness.analyze.frames import is_null
from harness.errors import UserError

MIN_SHORT = 6  # hex digits of a short id at least (collisions then need ~4000 cells for a 1/1000 chance)
SHOW_CANDIDATES = 6  # candidates named in an ambiguous-reference message


def cell_hash(cell_id: str) -> str:
    """The SHA-1 hex digest of a cell id (a short id is a prefix of it)."""
    return hashlib.sha1(cell_id.encode("utf-8")).hexdigest()


def short_ids(cell_ids: Iterable[str], min_len: int = MIN_SHORT) -> dict[str, str]:
    """{cell_id: short id}: the shortest hash prefix (≥ min_len digits) that is unique over `cell_ids`."""
    ids = sorted(set(cell_ids))
    hashes = {c: cell_hash(c) for c in ids}
    n = min_len
    while n < 40 and len({h[:n] for h in hashes.values()}) < len(hashes):
        n += 1
    return {c: h[:n] for c, h in hashes.items()}


def resolve_cell(ref: str, cell_ids: Sequence[str], where: str = "the store") -> str:
    """The one cell id that `ref` names: the id itself, a unique prefix of an id, or of an id's hash.

    Unknown or ambiguous → UserError (one line naming the candidates, with their short ids).
    """
    known = list(dict.fromkeys(cell_ids))
    if ref in known:
        return ref
    r = ref.strip()
    low = r.lower()
    hits = [c for c in known if r and (c.startswith(r) or cell_hash(c).startswith(low))]
    if len(hits) == 1:
        return hits[0]
    short = short_ids(known)
    if not hits:
        sample = ", ".join(f"{short[c]} ({c})" for c in sorted(known)[:SHOW_CANDIDATES]) or "none"
        more = f", ... {len(known) - SHOW_CANDIDATES} more" if len(known) > SHOW_CANDIDATES else ""
        raise UserError(f"unknown cell {ref!r} in {where} (cells: {sample}{more}; `harness cells STORE` lists them)")
    names = ", ".join(f"{short[c]} ({c})" for c in sorted(hits)[:SHOW_CANDIDATES])
    more = f", ... {len(hits) - SHOW_CANDIDATES} more" if len(hits) > SHOW_CANDIDATES else ""
    raise UserError(f"ambiguous cell {ref!r}: {len(hits)} cells match: {names}{more}; give more characters")


def _short_model(name: object) -> str:
    """"gguf/smollm2-135m" → "smollm2-135m"; "-" for none."""
    return "-" if is_null(name) or name in ("", "-") else str(name).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def cells_table(cells: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) for `harness cells`: short id, task, arm, models, knobs, n, accuracy with CI, errors, MI and
    the full cell id (last). Columns with one value for every cell (task) or none (knobs, MI) are left out."""
    from harness.analyze.render import fmt, fmt_accuracy

    short = short_ids(cells["cell_id"])
    cols: dict[str, list[str]] = {
        "id": [short[c] for c in cells["cell_id"]],
        "task": [str(t) for t in cells["task"]],
        "arm": [str(a) for a in cells["arm"]],
        "compressor": [_short_model(c) for c in cells["compressor"]],
        "predictor": [_short_model(c) for c in cells["predictor"]],
        "knobs": [str(k) for k in cells["knobs"]],
        "n": ["-" if is_null(n) else str(int(n)) for n in cells["n"]],
        "accuracy [95% CI]": [fmt_accuracy(r) for _, r in cells.iterrows()],
        "errors": ["-" if is_null(e) else str(int(e)) for e in cells["errors"]],
        "MI bits": [fmt(b, ".3f") for b in cells["mi_bits"]],
        "cell id": [str(c) for c in cells["cell_id"]],
    }
    if len(set(cols["task"])) == 1:
        del cols["task"]
    for k in ("knobs", "MI bits"):
        if all(v == "-" for v in cols[k]):
            del cols[k]
    headers = list(cols)
    return headers, [list(r) for r in zip(*cols.values(), strict=True)]
