"""The results store, against SQLite (tmp file) and PostgreSQL (HARNESS_TEST_PG_URL, one fresh schema per test).

Start a local PostgreSQL with:  export HARNESS_TEST_PG_URL=$(bash scripts/start-postgres.sh | tail -1)
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from harness import results
from harness.errors import UserError
from harness.records import Document, ModelIdentity, Sample, Usage
from harness.store import REDACTED, SCHEMA_VERSION, TABLES, VIEW_NAME, Store, knob_hash, redact
from harness.store import store as store_mod
from harness.store.db import parse_url
from tests.conftest import need

PG_URL = os.environ.get("HARNESS_TEST_PG_URL", "").strip()
COMP = ModelIdentity("transformers", "tiny-compressor", "rev1", "bfloat16", "tmpl-a")
PRED = ModelIdentity("transformers", "tiny-predictor", "rev2", "bfloat16", "tmpl-b")


def _with_schema(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> Iterator[str]:
    """A store URL for an empty store: a fresh SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
        return
    need(
        bool(PG_URL),
        "HARNESS_TEST_PG_URL not set; export HARNESS_TEST_PG_URL=$(bash scripts/start-postgres.sh | tail -1)",
    )
    try:
        import psycopg
    except ImportError:
        need(False, 'psycopg not installed (pip install "psycopg[binary]")')
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        need(False, f"PostgreSQL at HARNESS_TEST_PG_URL unreachable: {str(e).strip()[:200]}")
    schema = "t_" + uuid.uuid4().hex[:12]
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield _with_schema(PG_URL, schema)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def _sample(i: int, group: str = "g0") -> Sample:
    return Sample(
        id=f"s{i}",
        question=f"What is item {i}?",
        documents=(Document(id="d", text=f"Item {i} is {i * 10}.", is_gold=True),),
        answers=(str(i * 10),),
        group_id=group,
        answer_type="number",
        meta={"source": "synthetic", "i": i},
    )


def _populate(st: Store, run_id: str = "run-1") -> dict[str, int]:
    """A small two-arm run: 3 samples, compressed (1 compression each) and no-context predictions, scores."""
    st.start_run(
        run_id=run_id,
        name="demo",
        config={"models": {"predictor": {"api_key_env": "OPENAI_API_KEY", "api_key": "sk-secret"}}, "seed": 0},
        git_commit="abc123",
        package_versions={"harness": "0.1.0"},
    )
    comp = st.model_id(COMP, {"params": 135_000_000, "family": "smollm2"})
    pred = st.model_id(PRED)
    kh = knob_hash({"prompt": "v1", "max_new_tokens": 64})
    st.upsert_cell(
        cell_id=f"{run_id}/c",
        run_id=run_id,
        task="syn",
        compressor_model_id=comp,
        predictor_model_id=pred,
        arm="compressed",
        knobs={"knob_hash": kh},
    )
    st.upsert_cell(cell_id=f"{run_id}/n", run_id=run_id, task="syn", predictor_model_id=pred, arm="no-context")
    st.add_samples("syn", [_sample(i) for i in range(3)])
    for i in range(3):
        cid = st.add_compression(
            compressor_model_id=comp,
            task="syn",
            sample_id=f"s{i}",
            knob_hash=kh,
            text=f"item {i} = {i * 10}",
            token_ids=[1, 2, 3, i],
            context_tokens=40,
            finish_reason="stop",
            params={"temperature": 0.0},
            run_id=run_id,
            usage=Usage(40, 4, 0.5),
        )
        p1 = st.add_prediction(
            cell_id=f"{run_id}/c", sample_id=f"s{i}", arm="compressed", text=str(i * 10), compression_id=cid,
            usage=Usage(20, 2, 0.1),
        )  # fmt: skip
        p2 = st.add_prediction(cell_id=f"{run_id}/n", sample_id=f"s{i}", arm="no-context", text="7")
        st.add_score(prediction_id=p1, metric="numeric", value=1.0, correct=True, parsed=str(i * 10))
        st.add_score(prediction_id=p2, metric="numeric", value=0.0, correct=False, parsed="7", flags=["guess"])
    for stage in ("compress", "predict", "score"):
        st.set_cell_status(f"{run_id}/c", stage, "done")
    st.add_mi_estimate(
        run_id=run_id, task="syn", compressor_model_id=comp, scorer_model_id=comp, mode="drawn-set", knob_hash=kh,
        n_contexts=3, n_samples=1, sampling={"temperature": 1.0}, bits=1.2, ci_lo=0.9, ci_hi=1.5,
        upper_bits=math.inf, upper_is_bound=True, saturated_fraction=0.1, bits_per_token=0.3, mean_tokens=4.0,
    )  # fmt: skip
    st.add_error(run_id=run_id, stage="predict", message="timeout", ref_kind="prediction", ref_id=99, sample_id="s9")
    return {"comp": comp, "pred": pred}


COUNTS = {
    "runs": 1,
    "models": 2,
    "cells": 2,
    "samples": 3,
    "compressions": 3,
    "predictions": 6,
    "scores": 6,
    "usage": 6,
    "mi_estimates": 1,
    "errors": 1,
    "compression_terms": 0,
    "trace_steps": 0,
}


# ------------------------------------------------------------------ schema and versions


def test_schema_created_with_version(url):
    with Store.open(url) as st:
        assert st.schema_version() == SCHEMA_VERSION == 4
        assert all(st.count(t) == 0 for t in TABLES)
        cols, rows = st.query(f"SELECT * FROM {VIEW_NAME}")
        assert "compressor" in cols and rows == []
    with Store.open(url) as st:  # reopening an existing store adds no version row
        assert st.query("SELECT COUNT(*) FROM schema_version")[1][0][0] == 1


def test_v1_store_migrates_to_one_usage_row_per_call(url):
    """A version-1 store (usage keyed by [call_kind, ref_id]) is upgraded: its rows stay, and a second call for the
    same compression then adds a second usage row."""
    from harness.store.db import Db, parse_url

    with Store.open(url) as st:  # rebuild the v1 usage table and version
        st.start_run(run_id="r", package_versions={})
        mid = st.model_id(COMP)
        cid = st.add_compression(compressor_model_id=mid, task="t", sample_id="s", knob_hash="k", text="a",
                                 usage=Usage(4, 2, 0.1))
        db = st._db
        with db.transaction():
            db.execute("DROP INDEX ux_usage_key")
            db.execute("ALTER TABLE usage DROP COLUMN call_id")
            db.execute("ALTER TABLE usage DROP COLUMN run_id")
            db.execute("CREATE UNIQUE INDEX ux_usage_key ON usage (call_kind, ref_id)")
            db.execute("DROP TABLE leases")
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version, applied_at) VALUES (1, 'x')")
    db = Db.connect(parse_url(url), create=False)
    with db.transaction():  # the v1 key refuses a second row for the same call_kind and ref_id
        db.execute("INSERT INTO usage (call_kind, ref_id, created_at) VALUES ('compress', ?, 'x') "
                   "ON CONFLICT DO NOTHING", (cid,))
    db.close()
    with Store.open(url) as st:
        assert st.schema_version() == SCHEMA_VERSION and st.count("usage") == 1
        st.add_compression(compressor_model_id=mid, task="t", sample_id="s", knob_hash="k", text="b",
                           usage=Usage(4, 2, 0.1), run_id="r")
        assert st.count("usage", call_kind="compress", ref_id=cid) == 2
        assert st.find_compression(compressor_model_id=mid, task="t", sample_id="s", knob_hash="k").text == "a"


def test_newer_schema_version_is_refused(url):
    with Store.open(url) as st:
        st._db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (SCHEMA_VERSION + 1, "x"))
    with pytest.raises(UserError) as e:
        Store.open(url)
    msg = str(e.value)
    assert "newer" in msg and str(SCHEMA_VERSION + 1) in msg and "\n" not in msg


def test_migration_hook_runs_for_older_store(url, monkeypatch):
    with Store.open(url) as st:
        st.start_run(run_id="r", package_versions={})
    calls = []

    def next_version(db):
        calls.append(db.dialect)
        db.execute("ALTER TABLE runs ADD COLUMN note TEXT")

    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_mod.MIGRATIONS, SCHEMA_VERSION, next_version)
    with Store.open(url) as st:
        assert st.schema_version() == SCHEMA_VERSION + 1 and len(calls) == 1
        assert "note" in st.query("SELECT * FROM runs")[0] and st.count("runs") == 1
    with Store.open(url) as st:  # already migrated: the hook does not run again
        assert len(calls) == 1


def test_missing_store_not_created_when_reading(url):
    target = parse_url(url)
    with pytest.raises(UserError):
        results.load(url)
    if target.dialect == "sqlite":
        assert not Path(url).exists()


def test_url_forms(tmp_path):
    assert parse_url("sqlite:///rel/x.db").path == "rel/x.db"
    assert parse_url(f"sqlite:///{tmp_path}/x.db").path == f"{tmp_path}/x.db"
    assert parse_url("results/x.db").dialect == "sqlite"
    assert parse_url("postgres://u@h/db").dialect == "postgresql"
    with pytest.raises(UserError):
        parse_url("mysql://u@h/db")
    with Store.open(f"sqlite:///{tmp_path}/sub/s.db") as st:
        assert st.query("PRAGMA journal_mode")[1][0][0] == "wal"
    assert (tmp_path / "sub" / "s.db").exists()


# ------------------------------------------------------------------ idempotency, retries, transactions


def test_idempotent_inserts(url):
    with Store.open(url) as st:
        ids = _populate(st)
        again = _populate(st)  # a resumed run repeating every write
        assert again == ids
        # every row once, except usage: one row per call, and the repeat made every call again
        assert {t: st.count(t) for t in TABLES} == {**COUNTS, "usage": 2 * COUNTS["usage"]}
        assert st.model_id(COMP) == ids["comp"]
        kh = knob_hash({"prompt": "v1", "max_new_tokens": 64})
        c = st.find_compression(compressor_model_id=ids["comp"], task="syn", sample_id="s1", knob_hash=kh)
        assert c is not None and c.text == "item 1 = 10" and c.token_ids == [1, 2, 3, 1] and c.n_tokens == 4
        assert c.usage == Usage(40, 4, 0.5, False) and c.to_generation().usage.cached
        same = st.add_compression(compressor_model_id=ids["comp"], task="syn", sample_id="s1", knob_hash=kh, text="x")
        assert same == c.compression_id
        assert (
            st.find_compression(compressor_model_id=ids["comp"], task="syn", sample_id="s1", knob_hash="nope") is None
        )
        # a second draw (j=1) is a new row
        j1 = st.add_compression(
            compressor_model_id=ids["comp"], task="syn", sample_id="s1", knob_hash=kh, text="y", sample_index=1
        )
        assert j1 != c.compression_id and st.count("compressions") == 4
        # NULL compression_id still collides in the predictions key
        p = st.find_prediction(cell_id="run-1/n", sample_id="s0", arm="no-context")
        assert p is not None and p.text == "7"
        assert st.add_prediction(cell_id="run-1/n", sample_id="s0", arm="no-context", text="8") == p.prediction_id
        # upserting a cell keeps its stage statuses; model meta merges
        st.upsert_cell(cell_id="run-1/c", run_id="run-1", task="syn", predictor_model_id=ids["pred"], arm="compressed")
        assert st.cell_status("run-1/c") == {"compress": "done", "predict": "done", "score": "done"}
        st.model_id(COMP, {"size": "135M"})
        (m,) = st.rows("models", model_id=ids["comp"])
        assert '"family": "smollm2"' in m["meta_json"] and '"size": "135M"' in m["meta_json"]


def test_resumed_run_and_status_validation(url):
    with Store.open(url) as st:
        st.start_run(run_id="r", name="a", config={"x": 1}, package_versions={})
        st.finish_run("r", "failed")
        st.start_run(run_id="r", name="a", config={"x": 2}, package_versions={})
        (run,) = st.rows("runs")
        assert run["status"] == "running" and run["finished_at"] is None and run["config_json"] == '{"x": 1}'
        st.finish_run("r")
        assert st.rows("runs")[0]["status"] == "done" and st.rows("runs")[0]["finished_at"]
        with pytest.raises(ValueError):
            st.finish_run("r", "great")
        with pytest.raises(KeyError):
            st.finish_run("nope")
        with pytest.raises(KeyError):
            st.set_cell_status("nope", "predict", "done")
        with pytest.raises(ValueError):
            st.set_cell_status("nope", "dance", "done")
        with pytest.raises(ValueError):
            st.add_usage(call_kind="train", ref_id=1)


def test_errored_rows_are_replaced_by_a_retry(url):
    with Store.open(url) as st:
        _populate(st)
        comp = st.model_id(COMP)
        kw = {"compressor_model_id": comp, "task": "syn", "sample_id": "s7", "knob_hash": "k"}
        bad = st.add_compression(**kw, text="", error="timeout", usage=Usage(10, 0, 30.0))
        assert st.add_compression(**kw, text="", error="timeout again") == bad  # still the first error
        good = st.add_compression(**kw, text="ok", usage=Usage(10, 3, 1.0))
        assert good == bad
        c = st.find_compression(**kw)
        assert c is not None and c.error is None and c.text == "ok" and c.usage == Usage(10, 3, 1.0, False)
        assert st.count("usage", call_kind="compress", ref_id=bad) == 2  # both calls reached the model
        assert st.add_compression(**kw, text="", error="late failure") == good
        assert st.find_compression(**kw).text == "ok"  # an error never overwrites a good row
        pid = st.add_prediction(cell_id="run-1/c", sample_id="s7", arm="compressed", text="", compression_id=good,
                                error="boom")  # fmt: skip
        pid2 = st.add_prediction(cell_id="run-1/c", sample_id="s7", arm="compressed", text="70", compression_id=good,
                                 usage=Usage(5, 1, 0.1))  # fmt: skip
        assert pid2 == pid and st.find_prediction(cell_id="run-1/c", sample_id="s7", arm="compressed",
                                                  compression_id=good).text == "70"  # fmt: skip
        assert st.rows("usage", call_kind="predict", ref_id=pid)[0]["model_id"] == st.model_id(PRED)


def test_failure_mid_write_leaves_no_partial_row(url):
    with Store.open(url) as st:
        ids = _populate(st)
        n_comp, n_usage = st.count("compressions"), st.count("usage")
        # the compression row is written first, then its usage row fails: both are rolled back
        with pytest.raises(ValueError):
            st.add_compression(compressor_model_id=ids["comp"], task="syn", sample_id="s5", knob_hash="k", text="t",
                               usage=Usage(1, 1, 0.1), flops="not-a-number")  # fmt: skip
        assert st.count("compressions") == n_comp and st.count("usage") == n_usage
        # a database error (foreign key) mid-transaction rolls back the earlier writes of the block
        n_pred = st.count("predictions")
        with pytest.raises(Exception), st.transaction():  # noqa: B017 - sqlite3/psycopg raise different classes
            st.add_prediction(cell_id="run-1/n", sample_id="s5", arm="no-context", text="a")
            st.add_score(prediction_id=10_000, metric="em", value=1.0, correct=True)
        assert st.count("predictions") == n_pred and st.count("scores") == COUNTS["scores"]
        # a failing inner write under an outer transaction undoes only itself (savepoint)
        with st.transaction():
            st.add_prediction(cell_id="run-1/n", sample_id="s6", arm="no-context", text="b")
            with pytest.raises(ValueError):
                st.add_compression(compressor_model_id=ids["comp"], task="syn", sample_id="s6", knob_hash="k",
                                   text="t", usage=Usage(), dollars="free")  # fmt: skip
        assert st.count("predictions") == n_pred + 1 and st.count("compressions") == n_comp
        # the store stays usable after rollbacks
        assert st.add_error(run_id="run-1", stage="compress", message="after") > 0


# ------------------------------------------------------------------ persistence, pandas, export, redaction


def test_reopen_keeps_all_rows(url):
    with Store.open(url) as st:
        _populate(st)
    with Store.open(url) as st:
        assert {t: st.count(t) for t in TABLES} == COUNTS
        _populate(st, run_id="run-2")  # same models and samples, new run/cells/predictions
    with Store.open(url) as st:
        counts = {t: st.count(t) for t in TABLES}
    assert counts["runs"] == 2 and counts["models"] == 2 and counts["samples"] == 3 and counts["compressions"] == 3
    assert counts["predictions"] == 12 and counts["scores"] == 12
    assert counts["usage"] == 12  # run-2 called the compressor again: its calls are counted although the rows existed
    frames = results.load(url)
    assert len(frames["predictions"]) == 12 and set(frames["runs"]["run_id"]) == {"run-1", "run-2"}


def test_pandas_load_and_joined_view(url):
    with Store.open(url) as st:
        _populate(st)
    frames = results.load(url)
    assert set(frames) == {*TABLES, VIEW_NAME}
    assert {t: len(frames[t]) for t in TABLES} == COUNTS
    v = frames[VIEW_NAME]
    assert len(v) == 6
    comp = v[v["arm"] == "compressed"]
    assert set(comp["compressor"]) == {"tiny-compressor"} and set(v["predictor"]) == {"tiny-predictor"}
    assert comp["summary_tokens"].tolist() == [4, 4, 4] and comp["context_tokens"].tolist() == [40, 40, 40]
    assert v[v["arm"] == "no-context"]["compressor"].isna().all()
    assert str(v["correct"].dtype) == "boolean" and str(v["prediction_id"].dtype) == "Int64"
    acc = v.groupby("arm")["correct"].mean().to_dict()
    assert acc == {"compressed": 1.0, "no-context": 0.0}
    assert set(v["group_id"]) == {"g0"}
    mi = frames["mi_estimates"].iloc[0]
    assert mi["bits"] == pytest.approx(1.2) and math.isinf(mi["upper_bits"]) and bool(mi["upper_is_bound"])
    assert str(frames["runs"]["started_at"].dtype).startswith("datetime64")
    assert frames["samples"].set_index("sample_id").loc["s1", "answers_json"] == '["10"]'


def test_dtypes_same_on_empty_store(url):
    with Store.open(url):
        pass
    frames = results.load(url)
    assert all(len(df) == 0 for df in frames.values())
    assert (
        str(frames["usage"]["prompt_tokens"].dtype) == "Int64" and str(frames["scores"]["correct"].dtype) == "boolean"
    )


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export(url, tmp_path, fmt):
    with Store.open(url) as st:
        _populate(st)
    out = tmp_path / f"export-{fmt}"
    paths = results.export(url, out, fmt=fmt)
    assert set(paths) == {*TABLES, VIEW_NAME}
    for name, p in paths.items():
        assert p == out / f"{name}.{fmt}" and p.exists()
        df = pd.read_parquet(p) if fmt == "parquet" else pd.read_csv(p)
        assert len(df) == (COUNTS[name] if name in TABLES else 6)
    view = pd.read_parquet(paths[VIEW_NAME]) if fmt == "parquet" else pd.read_csv(paths[VIEW_NAME])
    assert view["correct"].sum() == 3
    with pytest.raises(ValueError):
        results.export(url, out, fmt="xlsx")


def test_redact():
    cfg = {
        "models": {
            "predictor": {"api_key_env": "OPENAI_API_KEY", "api_key": "sk-123", "base_url": "http://h/v1"},
            "judge": {"OpenAI-Key": "abc", "hf_token": "hf_x", "token_file": "~/.tok", "max_new_tokens": 24},
        },
        "db": {"password": "pw", "Secret": "s", "client_secret": "cs", "url": "postgresql://me:hunter2@db:5432/x"},
        "list": [{"token": "t"}, {"token": None}, "plain"],
        "seed": 3,
    }
    r = redact(cfg)
    p, j, db = r["models"]["predictor"], r["models"]["judge"], r["db"]
    assert p == {"api_key_env": "OPENAI_API_KEY", "api_key": REDACTED, "base_url": "http://h/v1"}
    assert j == {"OpenAI-Key": REDACTED, "hf_token": REDACTED, "token_file": "~/.tok", "max_new_tokens": 24}
    assert db["password"] == db["Secret"] == db["client_secret"] == REDACTED
    assert db["url"] == "postgresql://me:***@db:5432/x"
    assert r["list"] == [{"token": REDACTED}, {"token": None}, "plain"] and r["seed"] == 3
    assert cfg["models"]["predictor"]["api_key"] == "sk-123"  # the input is not modified


def test_stored_config_is_redacted(url):
    with Store.open(url) as st:
        _populate(st)
        cfg = st.rows("runs")[0]["config_json"]
    assert "sk-secret" not in cfg and REDACTED in cfg and "OPENAI_API_KEY" in cfg


# ------------------------------------------------------------------ work leases (no models)


def _leases(st: Store, owner: str | None = None, **kw):
    from harness.store.lease import worker_id

    return st.leases("run-l", owner=owner or worker_id(), heartbeat=kw.pop("heartbeat", False), **kw)


def test_v2_store_migrates_to_leases(url):
    with Store.open(url) as st:
        with st._db.transaction():
            st._db.execute("DROP TABLE leases")
            st._db.execute("DELETE FROM schema_version")
            st._db.execute("INSERT INTO schema_version (version, applied_at) VALUES (2, 'x')")
    with Store.open(url) as st:
        assert st.schema_version() == SCHEMA_VERSION == 4
        with _leases(st) as a:
            assert a.claim("compress", "u1") == "claimed"


def test_v3_store_migrates_to_prompts_terms_and_traces(url):
    """A version-3 store (no prompt columns, no compression_terms or trace_steps) is upgraded with its rows kept."""
    with Store.open(url) as st:
        st.start_run(run_id="r", package_versions={})
        mid = st.model_id(COMP)
        cid = st.add_compression(compressor_model_id=mid, task="t", sample_id="s", knob_hash="k", text="z")
        with st._db.transaction():
            for t in ("compression_terms", "trace_steps"):
                st._db.execute(f"DROP TABLE {t}")
            if st.dialect == "postgresql":  # SQLite before 3.35 cannot drop columns; a v3 store lacks them
                st._db.execute("ALTER TABLE compressions DROP COLUMN prompt_json")
            st._db.execute("DELETE FROM schema_version")
            st._db.execute("INSERT INTO schema_version (version, applied_at) VALUES (3, 'x')")
    with Store.open(url) as st:
        assert st.schema_version() == SCHEMA_VERSION == 4
        assert st.rows("compressions")[0]["text"] == "z" and "prompt_json" in st._db.columns("compressions")
        st.add_compression_terms(cid, {"ib_x": 1.5, "ib_y": -0.25})
        st.add_compression_terms(cid, {"ib_x": 9.0})  # a known term is kept
        assert st.compression_terms(cid) == {"ib_x": 1.5, "ib_y": -0.25}


def test_prompts_and_trace_steps_round_trip(url):
    with Store.open(url) as st:
        st.start_run(run_id="r", package_versions={})
        mid = st.model_id(COMP)
        from harness.store.redact import register_secret

        register_secret("registered-secret-4711")  # an API key the process sends never reaches the store
        prompt = [{"role": "user", "content": "read this, key registered-secret-4711"}]
        cid = st.add_compression(compressor_model_id=mid, task="t", sample_id="s", knob_hash="k", text="z",
                                 prompt=prompt)
        stored = json.loads(st.rows("compressions", compression_id=cid)[0]["prompt_json"])
        assert stored[0]["role"] == "user" and "registered-secret-4711" not in stored[0]["content"]
        st.upsert_cell(cell_id="c", run_id="r", task="t", predictor_model_id=mid, arm="compressor-predictor")
        st.add_trace_step(cell_id="c", sample_id="s", step=1, kind="search", payload={"ids": ["d2"]}, round=0)
        st.add_trace_step(cell_id="c", sample_id="s", step=0, kind="plan", payload={"q": ["a"]}, error="bad json")
        st.add_trace_step(cell_id="c", sample_id="s", step=0, kind="plan", payload={"q": ["b"]})  # replaces error
        steps = st.trace("c", "s")
        assert [s["kind"] for s in steps] == ["plan", "search"] and steps[0]["payload"] == {"q": ["b"]}
        assert steps[0]["error"] is None and steps[1]["payload"]["ids"] == ["d2"]


def test_lease_claim_is_exclusive_and_done_is_seen(url):
    from harness.store.lease import BUSY, CLAIMED, DONE

    with Store.open(url) as s1, Store.open(url) as s2, _leases(s1, ttl=60) as a, _leases(s2, ttl=60) as b:
        assert a.claim("compress", "u1") == CLAIMED
        assert a.claim("compress", "u1") == CLAIMED  # its own lease: renewed, not refused
        assert b.claim("compress", "u1") == BUSY
        assert b.claim("compress", "u2") == CLAIMED and a.claim("compress", "u2") == BUSY
        assert b.claim("predict", "u1") == CLAIMED  # the key is (run, stage, unit)
        a.done("compress", "u1")
        assert b.claim("compress", "u1") == DONE  # done after b started: skipped
        assert a.held() == [] and b.held() == [("compress", "u2"), ("predict", "u1")]
    with Store.open(url) as s3, _leases(s3) as c:  # a worker started later checks finished units again
        assert c.claim("compress", "u1") == CLAIMED


def test_expired_lease_is_taken_over_and_heartbeat_keeps_it(url):
    from harness.store.lease import BUSY, CLAIMED

    with Store.open(url) as s1, Store.open(url) as s2:
        a, b = _leases(s1, ttl=0.6), _leases(s2, ttl=0.6)
        assert a.claim("compress", "u1") == CLAIMED and b.claim("compress", "u1") == BUSY
        time.sleep(0.8)  # a stopped renewing (as a kill -9 would): the lease expires
        assert b.claim("compress", "u1") == CLAIMED
        assert a.claim("compress", "u1") == BUSY  # now it is b's
        beating = _leases(s1, ttl=0.6, heartbeat=True)
        assert beating.claim("compress", "u2") == CLAIMED
        time.sleep(1.5)  # 2.5 TTLs: the heartbeat thread renewed it
        assert b.claim("compress", "u2") == BUSY
        beating.close()  # a worker that stops gives its unfinished leases back at once
        assert b.claim("compress", "u2") == CLAIMED
        a.close()
        b.close()


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(url):
    import socket
    import subprocess
    import sys

    from harness.store.lease import BUSY, CLAIMED, owner_is_dead, worker_id

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    host = socket.gethostname()
    me = worker_id()
    assert owner_is_dead(f"{host}:{pid}:ab", me) and not owner_is_dead(f"{host}:{os.getppid()}:ab", me)
    assert owner_is_dead(f"{host}:{os.getpid()}:old", me)  # this pid under another id: an earlier process
    assert not owner_is_dead(f"other-host:{pid}:ab", me) and not owner_is_dead(me, me)
    with Store.open(url) as s1, Store.open(url) as s2:
        ghost, other_host = _leases(s1, owner=f"{host}:{pid}:ab", ttl=600), _leases(s1, owner=f"elsewhere:{pid}:ab",
                                                                                     ttl=600)
        assert ghost.claim("compress", "u1") == CLAIMED and other_host.claim("compress", "u2") == CLAIMED
        b = _leases(s2, ttl=600)
        assert b.claim("compress", "u1") == CLAIMED  # no wait for the 600 s TTL
        assert b.claim("compress", "u2") == BUSY  # another host's worker: only its TTL tells
        b.close()


def test_each_splits_units_waits_for_the_others_and_gives_back_on_failure(url):
    from harness.store.lease import CLAIMED

    with Store.open(url) as s1, Store.open(url) as s2:
        a, b = _leases(s1, ttl=60), _leases(s2, ttl=60, poll=0.01)
        assert a.claim("compress", "u1") == CLAIMED
        waits: list[int] = []

        def on_wait(n: int) -> None:  # b has nothing else to do; a finishes u1 while b polls
            waits.append(n)
            if len(waits) == 3:
                a.done("compress", "u1")

        got = list(b.each("compress", ["u1", "u2", "u3"], str, on_wait))
        assert got == ["u2", "u3"] and waits == [1, 1, 1]
        assert b.claim("compress", "u2") == "done" == a.claim("compress", "u3")
        with pytest.raises(RuntimeError):
            for _ in b.each("predict", ["c1"], str):
                raise RuntimeError("the unit's work failed")
        assert a.claim("predict", "c1") == CLAIMED  # given back at once, not after the TTL
        a.close()
        b.close()


def test_workers_opening_one_new_store_at_once_create_it_once(url):
    """Several sweep workers start on one empty store together: each open succeeds and the schema is made once."""
    from concurrent.futures import ThreadPoolExecutor

    def open_close(_: int) -> int:
        with Store.open(url) as st:
            return st.schema_version()

    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(open_close, range(4))) == [SCHEMA_VERSION] * 4
    with Store.open(url) as st:
        assert st.query("SELECT COUNT(*) FROM schema_version")[1][0][0] == 1


def test_new_sqlite_files_opened_by_many_workers_at_once(tmp_path):
    """Switching a new SQLite file to WAL takes its lock without waiting on the busy timeout: workers opening one
    new store or response cache together used to fail with "database is locked" (6 of 40 rounds here)."""
    from concurrent.futures import ThreadPoolExecutor

    from harness.backends.cache import ResponseCache

    for i in range(20):
        d = tmp_path / str(i)

        def open_close(_: int, d: Path = d) -> int:
            with Store.open(str(d / "store.db")) as st:
                v = st.schema_version()
            ResponseCache(d / "cache.sqlite")
            return v

        with ThreadPoolExecutor(6) as ex:
            assert list(ex.map(open_close, range(6))) == [SCHEMA_VERSION] * 6
