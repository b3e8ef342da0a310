"""The Python API: run, sweep, read back and analyse from a script or a notebook.

    import harness

    res = harness.evaluate("my.yaml", overrides={"task": {"size": 4}})
    res.cells[["arm", "accuracy", "acc_lo", "acc_hi", "token_ratio", "mi_bits"]]

Every function wraps what the CLI runs (`harness run`, `harness sweep`, `harness report`, `harness compare`), and
every number is read back from the results store, so a `Results` holds exactly what `harness report` would show.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from harness.config import RunConfig, load_config, load_sweep_config, parse_config, parse_sweep_config
from harness.errors import UserError
from harness.mi import MIEstimate, estimate_mi

if TYPE_CHECKING:
    from harness.analyze.compare import Comparison
    from harness.analyze.report import Report

ConfigLike = str | Path | Mapping[str, Any] | RunConfig

__all__ = ["ConfigLike", "MIEstimate", "Results", "compare", "estimate_mi", "evaluate", "load", "report", "sweep"]


@dataclass
class Results:
    """A run's (or a store's) results as pandas DataFrames, read from its results store.

    cells: one row per cell (task × arm × models × knobs) from the one cell summariser that `harness report` uses:
    accuracy with its Wilson 95% CI (`acc_lo`, `acc_hi`) over the answered samples, `errors`, `summary_tokens`,
    `token_ratio`, tokens, seconds, FLOPs, dollars and the cell's MI (`mi_bits`, `mi_lo`, `mi_hi`, `mi_mc_se`).
    samples: one row per prediction (sample × cell): the prediction text, its counted score (`metric`, `value`,
    `correct`), `status` ("ok", "value" or "error" with `error_stage`), its compression's size and the usage of
    both calls. mi: the run's MI estimates (`group_id` "" is the pooled estimate over all groups) with the
    compressor's and scorer's names. tables: every table of the store (`harness.results.load`), unfiltered.
    summary: what the run or sweep itself returned (empty for `load`).
    """

    run_id: str | None
    store_url: str
    cells: pd.DataFrame
    samples: pd.DataFrame
    mi: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    summary: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (f"Results(run_id={self.run_id!r}, store_url={self.store_url!r}, cells={len(self.cells)} rows, "
                f"samples={len(self.samples)} rows, mi={len(self.mi)} rows)")


def _cell_frame(frames: dict[str, pd.DataFrame], run_id: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, per-prediction rows) from the one cell summariser that run, sweep, report and compare use."""
    from harness.analyze.frames import cell_frame

    cells, preds, _ = cell_frame(frames, run_id)
    return cells, preds


def _mi_frame(frames: dict[str, pd.DataFrame], run_id: str | None) -> pd.DataFrame:
    """The store's MI estimates (of one run, or all) with the compressor's and scorer's model names."""
    mi = frames["mi_estimates"]
    if run_id is not None:
        mi = mi[mi["run_id"] == run_id]
    names = frames["models"].set_index("model_id")["name"]
    mi = mi.assign(compressor=mi["compressor_model_id"].map(names), scorer=mi["scorer_model_id"].map(names))
    return mi.reset_index(drop=True)


def _store_url(url: str | Path) -> str:
    """A SQLite path made absolute (so the Results still point at it after a chdir); URLs as given."""
    s = str(url)
    return s if "://" in s else str(Path(s).expanduser().resolve())


def load(store: str | Path, run_id: str | None = None) -> Results:
    """Read a results store (a SQLite file or a `postgresql://` URL) into `Results`: every run, or one run's."""
    from harness.results import load as load_tables

    url = _store_url(store)
    frames = load_tables(url)
    if run_id is not None and not (frames["runs"]["run_id"] == run_id).any():
        known = ", ".join(frames["runs"]["run_id"].astype(str).head(5)) or "none"
        raise UserError(f"run_id {run_id!r}: no such run in {store} (runs: {known})")
    cells, samples = _cell_frame(frames, run_id)
    return Results(run_id, url, cells, samples, _mi_frame(frames, run_id), tables=frames)


def _merged(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """`b` deep-merged over `a` (nested mappings merged, anything else replaced), as `--set` does."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merged(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _config(config: ConfigLike, overrides: Mapping[str, Any] | None, *, sweep: bool) -> RunConfig:
    """A validated RunConfig from a YAML path, a mapping or a RunConfig, with `overrides` deep-merged in."""
    ov = dict(overrides or {})
    if isinstance(config, str | Path):
        return (load_sweep_config if sweep else load_config)(config, ov)
    if isinstance(config, RunConfig):
        if not ov:
            return config
        config = config.model_dump(mode="json", exclude_unset=True)
    if not isinstance(config, Mapping):
        raise UserError(f"config: expected a YAML path, a mapping or a RunConfig; got {type(config).__name__}")
    data = _merged(config, ov)
    return parse_sweep_config(data, "config") if sweep else parse_config(data, "config")


def _need_store(cfg: RunConfig) -> str:
    if not cfg.output.store:
        raise UserError("output.store: the Python API reads results back from the results store; set output.store "
                        "(a SQLite path or a postgresql:// URL) instead of null")
    return cfg.output.store


def evaluate(config: ConfigLike, *, overrides: Mapping[str, Any] | None = None, quiet: bool = True) -> Results:
    """Run one config (as `harness run`) and return its results read back from the results store.

    config: a YAML path, a mapping with the same fields, or a `harness.config.RunConfig`; overrides: nested fields
    merged over it (`{"task": {"size": 4}}`, like `--set task.size=4`); quiet: no progress bars. A config with a
    `sweep` section belongs to `sweep()`. Invalid configs raise `harness.errors.UserError` naming the field.
    """
    from harness.pipeline.run import run

    cfg = _config(config, overrides, sweep=False)
    if cfg.sweep is not None:
        raise UserError("config has a 'sweep' section; run it with harness.sweep(config)")
    url = _need_store(cfg)
    summary = run(cfg, quiet=quiet)
    run_id = summary.get("run_id") or Path(summary["run_dir"]).name
    res = load(url, run_id)
    res.summary = summary
    return res


def sweep(config: ConfigLike, *, overrides: Mapping[str, Any] | None = None, retry_errors: bool = False,
          quiet: bool = True) -> Results:
    """Run or resume a sweep (as `harness sweep`) and return its cells, samples and MI from the results store.

    config and overrides as in `evaluate`; the config needs a `sweep` section. retry_errors: redo calls whose
    stored result is an error (`--retry-errors`).
    """
    from harness.pipeline.sweep import run_sweep

    cfg = _config(config, overrides, sweep=True)
    _need_store(cfg)
    summary = run_sweep(cfg, retry_errors=retry_errors, quiet=quiet)
    res = load(summary["store"], summary["run_id"])
    res.summary = summary
    return res


def report(store: str | Path, out: str | Path | None = None, *, run_id: str | None = None,
           metric: str | None = None) -> Report:
    """Write the markdown report with plots for a results store (as `harness report`); returns what it wrote
    (`.path`, `.folder`, `.cells`, `.plots`). out: the folder (default `results/report-<store name>`); metric: the
    stored metric to count (`harness report --metric`)."""
    from harness.analyze.report import build_report
    from harness.preflight import check_store_url

    check_store_url(str(store), "store", must_exist=True, write=False)
    return build_report(store, out, run_id=run_id, metric=metric)


def compare(store: str | Path, cell_a: str, cell_b: str, *, n_boot: int = 2000, seed: int = 0) -> Comparison:
    """Paired comparison of two cells of a store (as `harness compare`): accuracy difference with its CI and
    McNemar's p, mean costs, and the paired MI difference when both are scored by one scorer.
    `harness.analyze.compare.format_comparison(c)` prints it as the CLI does."""
    from harness.analyze.compare import compare_cells
    from harness.preflight import check_store_url

    check_store_url(str(store), "store", must_exist=True, write=False)
    return compare_cells(store, cell_a, cell_b, n_boot=n_boot, seed=seed)
