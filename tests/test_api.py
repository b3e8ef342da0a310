"""The public Python API (`harness.evaluate`, `sweep`, `load`, `report`, `compare`, `estimate_mi`).

The end-to-end tests run smollm2-135m (float32, both roles) on 2 synthetic-records samples of one question group,
with MI (N=2 contexts, M=2), and check the frames against what the CLI stores and prints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import harness
from harness.errors import UserError
from tests.conftest import need_pack

CELL_COLS = {"cell_id", "run_id", "task", "arm", "compressor", "predictor", "samples", "answered", "n", "correct",
             "accuracy", "acc_lo", "acc_hi", "errors", "summary_tokens", "token_ratio", "tokens", "mi_bits", "mi_lo",
             "mi_hi", "mi_mc_se"}
SAMPLE_COLS = {"prediction_id", "cell_id", "run_id", "task", "arm", "sample_id", "group_id", "prediction", "metric",
               "value", "correct", "status", "error_stage", "summary_tokens", "context_tokens"}
MI_COLS = {"run_id", "task", "group_id", "compressor", "scorer", "mode", "n_contexts", "n_samples", "bits", "ci_lo",
           "ci_hi", "saturated_fraction", "bits_per_token"}


def _config(tmp: Path) -> dict[str, Any]:
    model = {"model": "gguf/smollm2-135m", "dtype": "float32", "batch_size": 4}
    return {
        "name": "api",
        "task": {"name": "synthetic-records", "size": 2, "seed": 0,
                 "options": {"n_templates": 1, "context_tokens": 120}},  # one group of N=2 contexts
        "models": {"compressor": dict(model), "predictor": dict(model)},
        "arms": ["compressed", "no-context"],
        "generation": {"compressor": {"max_new_tokens": 16}, "predictor": {"max_new_tokens": 4}},
        "mi": {"samples_per_context": 2, "scorers": ["self"], "n_boot": 200},
        "output": {"dir": str(tmp / "runs" / "{name}"), "cache": str(tmp / "cache.sqlite"),
                   "store": str(tmp / "store.db")},
    }


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[harness.Results, Path, dict[str, Any]]:
    need_pack("smollm2-135m")
    tmp = tmp_path_factory.mktemp("api")
    cfg = _config(tmp)
    return harness.evaluate(cfg), tmp, cfg


def test_api_exports() -> None:
    assert set(harness.__all__) >= {"evaluate", "sweep", "report", "compare", "load", "estimate_mi", "Results"}
    for name in harness.__all__:
        assert getattr(harness, name) is not None
    from harness import mi

    assert harness.estimate_mi is mi.estimate_mi
    with pytest.raises(AttributeError):
        harness.no_such_name  # noqa: B018


def test_estimate_mi_reexport_on_a_known_channel() -> None:
    """Each context has its own deterministic compression (z_i impossible elsewhere): I = log2 N exactly."""
    n, m = 4, 2
    logp = np.full((n, m, n), -np.inf)
    for i in range(n):
        logp[i, :, i] = 0.0
    est = harness.estimate_mi(logp)
    assert est.bits == pytest.approx(math.log2(n)) and est.n_contexts == n


def test_invalid_configs_fail_before_any_model(tmp_path: Path) -> None:
    """Pure config checks (no model is loaded): a typo, a sweep config, no store, a wrong type."""
    cfg = _config(tmp_path)
    with pytest.raises(UserError, match="unknown field 'arm'"):
        harness.evaluate({**cfg, "arm": ["compressed"]})
    with pytest.raises(UserError, match=r"harness\.sweep"):
        harness.evaluate(cfg, overrides={"sweep": {"compressors": ["gguf/smollm2-135m"],
                                                   "predictors": ["gguf/smollm2-135m"]}})
    with pytest.raises(UserError, match=r"output\.store"):
        harness.evaluate(cfg, overrides={"output": {"store": None}})
    with pytest.raises(UserError, match="missing 'sweep' section"):
        harness.sweep(cfg)
    with pytest.raises(UserError, match="expected a YAML path, a mapping or a RunConfig"):
        harness.evaluate(42)  # type: ignore[arg-type]


@pytest.mark.slow
def test_evaluate_frames(evaluated: tuple[harness.Results, Path, dict[str, Any]]) -> None:
    res, tmp, _ = evaluated
    assert res.store_url == str((tmp / "store.db").resolve()) and res.run_id
    assert res.run_id == Path(res.summary["run_dir"]).name
    assert CELL_COLS <= set(res.cells.columns) and len(res.cells) == 2
    assert sorted(res.cells["arm"]) == ["compressed", "no-context"]
    assert (res.cells["run_id"] == res.run_id).all()
    assert SAMPLE_COLS <= set(res.samples.columns) and len(res.samples) == 4  # 2 samples × 2 arms
    assert set(res.samples["cell_id"]) == set(res.cells["cell_id"])
    assert MI_COLS <= set(res.mi.columns)
    pooled = res.mi[res.mi["group_id"] == ""]
    assert len(pooled) == 1 and pooled["scorer"].iloc[0] == pooled["compressor"].iloc[0]  # self-scored
    assert int(pooled["n_contexts"].iloc[0]) == 2 and 0.0 <= float(pooled["bits"].iloc[0]) <= 1.0 + 1e-9


@pytest.mark.slow
def test_evaluate_numbers_equal_the_clis(evaluated: tuple[harness.Results, Path, dict[str, Any]]) -> None:
    """The frames hold what `harness run` printed (its summary) and what `harness report` writes (cells.csv)."""
    from harness.cli import main

    res, tmp, _ = evaluated
    by_arm = res.cells.set_index("arm")
    for row in res.summary["rows"]:  # the run's own table
        c = by_arm.loc[row["arm"]]
        assert c["accuracy"] == pytest.approx(row["accuracy"])
        assert [c["acc_lo"], c["acc_hi"]] == pytest.approx(row["accuracy_ci"])
        assert (int(c["samples"]), int(c["answered"]), int(c["errors"])) == (row["n"], row["answered"], row["errors"])
        if row["token_ratio"] is not None:
            assert c["token_ratio"] == pytest.approx(row["token_ratio"])
            assert c["summary_tokens"] == pytest.approx(row["summary_tokens"])
    (mi_row,) = res.summary["mi"]
    assert float(res.mi.loc[res.mi["group_id"] == "", "bits"].iloc[0]) == pytest.approx(mi_row["bits"])
    assert by_arm.loc["compressed", "mi_bits"] == pytest.approx(mi_row["bits"])
    # per-sample verdicts: the accuracy is the mean of the samples frame's `correct`
    for arm, g in res.samples.groupby("arm"):
        assert by_arm.loc[arm, "accuracy"] == pytest.approx(g["correct"].astype(float).mean())

    out = tmp / "report"
    assert main(["report", res.store_url, "--out", str(out), "--run", str(res.run_id)]) == 0
    csv = pd.read_csv(out / "cells.csv").set_index("cell_id").sort_index()
    mine = res.cells.set_index("cell_id").sort_index()
    assert list(csv.index) == list(mine.index)
    for col in ("accuracy", "acc_lo", "acc_hi", "n", "answered", "errors", "summary_tokens", "token_ratio",
                "mi_bits"):
        np.testing.assert_allclose(pd.to_numeric(csv[col]).to_numpy(float),
                                   pd.to_numeric(mine[col]).to_numpy(float), rtol=1e-12, equal_nan=True)


@pytest.mark.slow
def test_load_report_compare(evaluated: tuple[harness.Results, Path, dict[str, Any]]) -> None:
    res, tmp, _ = evaluated
    again = harness.load(res.store_url, res.run_id)
    pd.testing.assert_frame_equal(again.cells, res.cells)
    pd.testing.assert_frame_equal(again.samples, res.samples)
    pd.testing.assert_frame_equal(again.mi, res.mi)
    assert len(harness.load(res.store_url).cells) >= 2
    with pytest.raises(UserError, match="no such run"):
        harness.load(res.store_url, "nope")

    rep = harness.report(res.store_url, tmp / "rep", run_id=res.run_id)
    assert rep.path.is_file() and len(rep.cells) == 2
    ids = res.cells.set_index("arm")["cell_id"]
    c = harness.compare(res.store_url, ids["compressed"], ids["no-context"])
    assert c.n_pairs == 2
    assert c.acc_a == pytest.approx(res.cells.set_index("arm").loc["compressed", "accuracy"])


@pytest.mark.slow
def test_sweep_returns_its_cells(evaluated: tuple[harness.Results, Path, dict[str, Any]]) -> None:
    """A one-cell sweep over the same models (answered from the evaluate run's response cache where it can)."""
    _, tmp, cfg = evaluated
    cfg = {k: v for k, v in cfg.items() if k != "mi"}
    cfg["arms"] = ["compressed"]
    cfg["output"] = {**cfg["output"], "store": str(tmp / "sweep.db")}
    cfg["sweep"] = {"compressors": ["gguf/smollm2-135m"], "predictors": ["gguf/smollm2-135m"]}
    res = harness.sweep(cfg)
    assert res.run_id == res.summary["run_id"] and res.summary["cells"] == 1
    assert len(res.cells) == 1 and len(res.samples) == 2 and res.mi.empty
    assert res.cells["accuracy"].iloc[0] == pytest.approx(res.samples["correct"].astype(float).mean())
