"""The plan: units keyed by M and N, one rule for which compression the predictor reads, and `--dry-run` counts
against a real sweep on smollm2 (the requests it says it will make are the requests made, counted from the
results store's usage rows and the backends' request counters)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.config import load_sweep_config
from harness.pipeline.plan import (
    GREEDY_INDEX,
    compression_variants,
    dry_run,
    expand,
    read_variant,
    sample_seed,
    unit_key_fields,
)
from tests.conftest import REPO, need_pack

MS, NS = [1, 2], [2, 4]  # mi.samples_per_context × mi.contexts_per_group


def _cfg(tmp_path: Path, knobs: dict[str, list[Any]] | None = None, **mi: Any) -> Path:
    cfg = {
        "name": "t-plan",
        "task": {"name": "synthetic-records", "size": 4, "seed": 1,
                 "options": {"n_templates": 1, "context_tokens": 60}},
        "models": {"compressor": {"model": "gguf/smollm2-135m", "batch_size": 8, "dtype": "float32"},
                   "predictor": {"model": "gguf/smollm2-135m", "batch_size": 8, "dtype": "float32"}},
        "arms": ["compressed", "no-context"],
        "generation": {"compressor": {"max_new_tokens": 8}, "predictor": {"max_new_tokens": 4}},
        "mi": {"samples_per_context": 2, "scorers": ["self"], "n_boot": 100, **mi},
        "sweep": {"compressors": ["gguf/smollm2-135m"], "predictors": ["gguf/smollm2-135m"],
                  "knobs": knobs if knobs is not None else {"mi.samples_per_context": MS,
                                                            "mi.contexts_per_group": NS}},
        "output": {"dir": str(tmp_path / "out"), "cache": None, "store": str(tmp_path / "store.db")},
    }
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_m_and_n_knobs_make_distinct_units(tmp_path):
    """Pure expansion: one unit per (M, N), sharing one compression key; each compressed cell reads the unit with
    its own M and N (before, all four cells read the first N=2, M=1 unit)."""
    plan = expand(load_sweep_config(_cfg(tmp_path)))
    units = list(plan.units.values())
    assert len(units) == len(MS) * len(NS)
    assert len({u.knob_hash for u in units}) == 1  # the compressions are shared: j < M is the same draw for any M
    assert len({u.mi_hash for u in units}) == len(units)  # the MI estimates are not
    assert {(u.cfg.mi.samples_per_context, u.cfg.mi.contexts_per_group) for u in units} == {
        (m, n) for m in MS for n in NS}
    for u in units:
        f = unit_key_fields(u.cfg)["mi"]
        assert (f["samples_per_context"], f["contexts_per_group"]) == (u.cfg.mi.samples_per_context,
                                                                      u.cfg.mi.contexts_per_group)
    compressed = [c for c in plan.cells.values() if c.arm == "compressed"]
    assert len(compressed) == len(units)
    for c in compressed:
        u = plan.units[c.unit]
        assert (u.cfg.mi.samples_per_context, u.cfg.mi.contexts_per_group) == (
            c.knobs["mi.samples_per_context"], c.knobs["mi.contexts_per_group"])


def test_which_compression_the_predictor_reads_is_decided_once(tmp_path):
    """sample0 reads MI draw j=0 with its per-sample seed; greedy reads index GREEDY_INDEX (-1, the store's) with
    the run seed, made only for the compressed arm."""
    cfg = expand(load_sweep_config(_cfg(tmp_path, knobs={}))).cells
    rc = next(c.cfg for c in cfg.values() if c.arm == "compressed")
    v = read_variant(rc, "s1")
    assert (v.kind, v.index, v.seed) == ("sample", 0, sample_seed(rc.seed, "s1", 0))
    assert [(x.kind, x.index) for x in compression_variants(rc, "s1")] == [("sample", 0), ("sample", 1)]
    greedy = rc.model_copy(update={"mi": rc.mi.model_copy(update={"predictor_reads": "greedy"})})
    v = read_variant(greedy, "s1")
    assert (v.kind, v.index, v.seed, v.params.temperature) == ("greedy", GREEDY_INDEX, rc.seed, 0.0)
    assert [(x.kind, x.index) for x in compression_variants(greedy, "s1")] == [
        ("greedy", -1), ("sample", 0), ("sample", 1)]
    no_arm = greedy.model_copy(update={"arms": ["no-context"]})
    assert [x.kind for x in compression_variants(no_arm, "s1")] == ["sample", "sample"]


def _store_counts(db: Path) -> dict[str, Any]:
    with sqlite3.connect(db) as c:
        calls = dict(c.execute("SELECT call_kind, COUNT(*) FROM usage WHERE NOT cached GROUP BY call_kind").fetchall())
        mi = c.execute("SELECT knob_hash, n_samples, n_contexts FROM mi_estimates WHERE group_id = '' "
                       "AND error IS NULL").fetchall()
        cells = c.execute("SELECT cell_id, knobs_json FROM cells WHERE arm = 'compressed'").fetchall()
        return {"compressions": c.execute("SELECT COUNT(*) FROM compressions").fetchone()[0],
                "predictions": c.execute("SELECT COUNT(*) FROM predictions").fetchone()[0],
                "calls": calls, "mi": mi, "cells": cells}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 4-unit sweep (M ∈ {1, 2} × N ∈ {2, 4}) on smollm2: the dry run before it, the sweep's summary, the store."""
    need_pack("smollm2-135m")
    from harness.pipeline.sweep import run_sweep

    d = tmp_path_factory.mktemp("plan")
    cfg = load_sweep_config(_cfg(d))
    before = dry_run(cfg)
    out = run_sweep(cfg, quiet=True)
    return cfg, before, out, d / "store.db"


def test_dry_run_counts_equal_the_requests_made(swept):
    _, dry, out, db = swept
    st = _store_counts(db)
    assert not dry["store_exists"]
    # compressions: 4 samples × M=2 draws, shared by the four units (asked once)
    assert dry["compressions"] == {"total": 4 * 2, "todo": 4 * 2, "done": 0} and st["compressions"] == 8
    assert st["calls"]["compress"] == 8
    # generate requests: usage rows (one per call) and the backends' counter agree with the dry run
    assert dry["generate_requests"] == {"compressor": 8, "predictor": st["calls"]["predict"], "total": 8 + 20}
    assert out["generate_requests"] == dry["generate_requests"]["total"] == sum(st["calls"].values())
    assert st["predictions"] == sum(c["predictions_todo"] for c in dry["cells"]) == 5 * 4
    # score requests: every draw under every context of its group, per unit: Σ N²·M
    assert dry["score_requests"] == {"compressor": sum(n * n * m for m in MS for n in NS), "total": 60}
    assert out["score_requests"] == 60
    assert dry["flops"]["compressor"] > 0 and dry["flops"]["predictor"] > 0 and dry["dollars"]["total"] is None
    assert {u["mi"]["samples_per_context"] for u in dry["units"]} == set(MS) and len(dry["units"]) == 4


def test_cells_read_their_own_units_mi_rows(swept):
    """Four MI rows, one per (M, N), each with its own M and N contexts; a compressed cell's knob_hash names the
    row of its own unit."""
    _, _, _, db = swept
    st = _store_counts(db)
    assert sorted((m, n) for _, m, n in st["mi"]) == sorted((m, n) for m in MS for n in NS)
    by_hash = {h: (m, n) for h, m, n in st["mi"]}
    assert len(by_hash) == 4
    for _, knobs in st["cells"]:
        k = json.loads(knobs)
        assert by_hash[k["knob_hash"]] == (k["mi.samples_per_context"], k["mi.contexts_per_group"])


def test_dry_run_of_a_finished_sweep_has_nothing_left(swept):
    cfg, _, _, _ = swept
    again = dry_run(cfg)
    assert again["store_exists"]
    assert again["compressions"] == {"total": 8, "todo": 0, "done": 8}
    assert again["generate_requests"]["total"] == 0 and again["score_requests"]["total"] == 0
    assert all(m["done"] for m in again["mi"]) and all(c["predictions_todo"] == 0 for c in again["cells"])


def test_dry_run_cli_json_has_the_keys(swept, capsys):
    from harness.cli import main

    _, _, _, db = swept
    p = db.parent / "sweep.yaml"
    assert main(["sweep", str(p), "--dry-run", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for k in ("cells", "units", "compressions", "generate_requests", "score_requests", "flops", "dollars"):
        assert k in d
    assert d["generate_requests"]["total"] == 0 and len(d["cells"]) == 5
    assert {"compressor", "knobs", "seed", "mi"} <= set(d["units"][0])
    assert main(["sweep", str(p), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "dry run, no model loaded" in text and "| total | 0 | 0 |" in text


def test_dry_run_loads_no_model(tmp_path):
    """A dry run in a fresh process on a config whose store does not exist: no weights loaded, nothing written."""
    need_pack("smollm2-135m")
    p = _cfg(tmp_path)
    code = ("import json, sys; from harness.backends.base import STATS; from harness.cli import main; "
            f"rc = main(['sweep', {str(p)!r}, '--dry-run', '--json']); "
            "print(json.dumps(dict(STATS)), file=sys.stderr); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads(r.stderr.strip().splitlines()[-1])
    assert stats.get("model_loads", 0) == 0
    assert json.loads(r.stdout)["generate_requests"]["total"] == 8 + 20
    assert not (tmp_path / "store.db").exists()


def test_an_old_stores_mi_rows_are_kept(tmp_path):
    """A single-unit sweep stored as the code before M and N were in the key did (MI rows and the cells' knob_hash
    under the compressions' knob hash): resuming it asks nothing again and keeps those rows."""
    need_pack("smollm2-135m")
    from harness.pipeline.sweep import run_sweep

    cfg = load_sweep_config(_cfg(tmp_path, knobs={}, samples_per_context=1))
    run_sweep(cfg, quiet=True)
    u = next(iter(expand(cfg).units.values()))
    db = tmp_path / "store.db"
    with sqlite3.connect(db) as c:  # rewrite the new keys to the old ones
        c.execute("UPDATE mi_estimates SET knob_hash = ?", (u.knob_hash,))
        for cid, knobs in c.execute("SELECT cell_id, knobs_json FROM cells").fetchall():
            k = json.loads(knobs)
            if k.get("knob_hash"):
                c.execute("UPDATE cells SET knobs_json = ? WHERE cell_id = ?",
                          (json.dumps({**k, "knob_hash": u.knob_hash}), cid))
        rows = c.execute("SELECT COUNT(*) FROM mi_estimates").fetchone()[0]
    assert u.mi_hash != u.knob_hash
    dry = dry_run(cfg)
    assert dry["score_requests"]["total"] == 0 and dry["generate_requests"]["total"] == 0
    again = run_sweep(cfg, quiet=True)
    assert again["score_requests"] == 0 and again["generate_requests"] == 0
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM mi_estimates").fetchone()[0] == rows
        assert {json.loads(k).get("knob_hash") for (k,) in c.execute(
            "SELECT knobs_json FROM cells WHERE arm = 'compressed'")} == {u.knob_hash}


#: ids that the code before plan.py (commit bcee175) gave this config, read from a store it wrote
OLD_IDS = {"compressed": "compat/synthetic-records/compressed/smollm2-135m/smollm2-135m/5ce174a8",
           "no-context": "compat/synthetic-records/no-context/-/smollm2-135m/f4f4b5cd"}
OLD_COMPRESSION_KNOB_HASH = "1746e6670b28e298"


def test_keys_are_those_of_stores_written_before(tmp_path):
    """Cell ids and the compressions' knob hash stay those an older harness stored (transport defaults such as
    batch_size moved and config sections were added since; neither may change an id), so a resumed old store
    redoes nothing; the MI rows' hash is new (M and N are in it) and adopted from the old rows
    (test_an_old_stores_mi_rows_are_kept)."""
    p = _cfg(tmp_path, knobs={})
    d = yaml.safe_load(p.read_text())
    d["name"] = "compat"
    for role in ("compressor", "predictor"):
        d["models"][role].pop("batch_size")
    p.write_text(yaml.safe_dump(d))
    plan = expand(load_sweep_config(p))
    assert {c.arm: c.cell_id for c in plan.cells.values()} == OLD_IDS
    (u,) = plan.units.values()
    assert u.knob_hash == OLD_COMPRESSION_KNOB_HASH
