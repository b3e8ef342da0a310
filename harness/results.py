"""Read a results store into pandas, or export it to Parquet/CSV files (one per table, plus the joined view)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from harness.store import TABLES, VIEW_NAME, Store
from harness.store.schema import logical_types

FORMATS = ("parquet", "csv")


def _frame(cols: list[str], rows: list[tuple[Any, ...]], types: dict[str, str]) -> pd.DataFrame:
    """A DataFrame with the same dtypes whichever backend (or no rows) it came from."""
    data: dict[str, Any] = {}
    for i, c in enumerate(cols):
        values = [r[i] for r in rows]
        kind = types.get(c, "text")
        if kind == "int":
            data[c] = pd.array([None if v is None else int(v) for v in values], dtype="Int64")
        elif kind == "float":
            data[c] = pd.array([float("nan") if v is None else float(v) for v in values], dtype="float64")
        elif kind == "bool":
            data[c] = pd.array([None if v is None else bool(v) for v in values], dtype="boolean")
        elif kind == "ts":
            data[c] = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601").dt.as_unit("us")
        else:
            data[c] = pd.Series(values, dtype=object)
    return pd.DataFrame(data, columns=cols)


def load_store(store: Store, tables: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Like `load`, from an open store."""
    names = tables or [*TABLES, VIEW_NAME]
    out: dict[str, pd.DataFrame] = {}
    for name in names:
        if name != VIEW_NAME and name not in TABLES:
            raise ValueError(f"unknown table {name!r}; tables: {', '.join([*TABLES, VIEW_NAME])}")
        if name == VIEW_NAME:
            order = "prediction_id, metric"
        else:
            order = TABLES[name].id_col or ", ".join(TABLES[name].primary)
        cols, rows = store.query(f"SELECT * FROM {name} ORDER BY {order}")
        out[name] = _frame(cols, rows, logical_types(name))
    return out


def load(url: str | Path, tables: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """One DataFrame per table, plus `predictions_scored` (prediction + score + cell + model names).

    JSON columns (`*_json`) stay JSON text; ids are nullable Int64, flags nullable boolean, `*_at` UTC datetimes.
    A missing store is a UserError (nothing is created).
    """
    with Store.open(url, create=False) as st:
        return load_store(st, tables)


def export(url: str | Path, folder: str | Path, fmt: str = "parquet") -> dict[str, Path]:
    """Write `<folder>/<table>.<fmt>` for every table and the joined view; returns {table: path}."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}; got {fmt!r}")
    out_dir = Path(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, df in load(url).items():
        p = out_dir / f"{name}.{fmt}"
        if fmt == "parquet":
            df.to_parquet(p, index=False)
        else:
            df.to_csv(p, index=False)
        paths[name] = p
    return paths
