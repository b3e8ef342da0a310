"""Two `harness sweep` processes on one results store split the work through the store's leases.

Real processes on the real smollm2 pack: a sweep with two compression units (two compressor max_new_tokens; greedy
compressions only, no MI, to keep it short) and three cells (two compressed, one no-context), run once alone and
then as two concurrent workers on a fresh store, on SQLite and on PostgreSQL (HARNESS_TEST_PG_URL;
`bash scripts/start-postgres.sh` prints one). The two workers must store each row once, make exactly the single
run's model requests between them, and both do a share: each waits after its first claim until the other holds a
lease (HARNESS_TEST_AWAIT_PEER), so the split is deterministic.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.store import Store
from tests.conftest import REPO, need, need_pack

PG_URL = os.environ.get("HARNESS_TEST_PG_URL", "").strip()
KEYS = {
    "compressions": "compressor_model_id, task, sample_id, knob_hash, sample_index, seed",
    "predictions": "cell_id, sample_id, COALESCE(compression_id, 0), arm",
    "scores": "prediction_id, metric",
    "mi_estimates": "run_id, task, group_id, compressor_model_id, scorer_model_id, knob_hash, mode",
}


def _write_cfg(tmp_path: Path, store: str) -> Path:
    cfg = {
        "name": "t-concurrent",
        "task": {"name": "synthetic-records", "size": 4, "seed": 3,
                 "options": {"n_templates": 1, "context_tokens": 120}},
        "models": {"compressor": {"model": "gguf/smollm2-135m", "batch_size": 4},
                   "predictor": {"model": "gguf/smollm2-135m", "batch_size": 4}},
        "arms": ["compressed", "no-context"],
        "generation": {"compressor": {"max_new_tokens": 8}, "predictor": {"max_new_tokens": 4}},
        "sweep": {"compressors": ["gguf/smollm2-135m"], "predictors": ["gguf/smollm2-135m"],
                  "knobs": {"generation.compressor.max_new_tokens": [6, 8]}},
        "output": {"dir": str(tmp_path / "out"), "cache": None, "store": store},
    }
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **extra}
    env.pop("HARNESS_CRASH_AT", None)
    return env


def _cmd(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "sweep", str(cfg), "-q"]


def _requests(out: str) -> tuple[int, int]:
    m = re.search(r"generate requests (\d+), score requests (\d+)", out)
    assert m, out[-2000:]
    return int(m.group(1)), int(m.group(2))


def _rows(url: str) -> dict[str, int]:
    """Rows per table (no duplicates under any natural key) and the usage rows of calls that reached a model."""
    with Store.open(url, create=False) as st:
        out = {t: st.count(t) for t in KEYS}
        for t, key in KEYS.items():
            _, dup = st.query(f"SELECT COUNT(*) FROM (SELECT {key} FROM {t} GROUP BY {key} HAVING COUNT(*) > 1) d")
            assert dup[0][0] == 0, f"duplicated rows in {t}"
        out["model_calls"] = st.count("usage", cached=False)
        out["errors_in_rows"] = st.query("SELECT (SELECT COUNT(*) FROM compressions WHERE error IS NOT NULL) + "
                                         "(SELECT COUNT(*) FROM predictions WHERE error IS NOT NULL)")[1][0][0]
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[dict[str, int], tuple[int, int]]:
    """One process alone: the rows and the requests the two workers must match."""
    need_pack("smollm2-135m")
    d = tmp_path_factory.mktemp("single")
    r = subprocess.run(_cmd(_write_cfg(d, str(d / "store.db"))), capture_output=True, text=True, env=_env(),
                       cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(str(d / "store.db"))
    assert rows["compressions"] == 2 * 4 and rows["predictions"] == 3 * 4 and rows["errors_in_rows"] == 0
    return rows, _requests(r.stdout)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> Iterator[str]:
    """A fresh store: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
        return
    need(bool(PG_URL), "HARNESS_TEST_PG_URL not set; export HARNESS_TEST_PG_URL=$(bash scripts/start-postgres.sh "
                       "| tail -1)")
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            sep = "&" if "?" in PG_URL else "?"
            yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def test_two_sweeps_on_one_store_split_the_work(tmp_path, single, store_url):
    want, (gen1, score1) = single
    cfg = _write_cfg(tmp_path, store_url)
    env = _env(HARNESS_TEST_AWAIT_PEER="120")
    procs = [subprocess.Popen(_cmd(cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=REPO) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    reqs = [_requests(out) for out, _ in outs]
    assert all(g > 0 for g, _ in reqs), reqs  # each worker did a share of the model requests
    # 0 duplicated requests: between them exactly the single run's, each stored once
    assert sum(g for g, _ in reqs) == gen1 and sum(s for _, s in reqs) == score1
    assert _rows(store_url) == want
    with Store.open(store_url, create=False) as st:
        _, rows = st.query("SELECT stage, COUNT(DISTINCT owner), COUNT(*), SUM(CASE WHEN done THEN 1 ELSE 0 END) "
                           "FROM leases GROUP BY stage")
        leases = {r[0]: tuple(int(x) for x in r[1:]) for r in rows}
        assert leases["compress"] == (2, 2, 2)  # one compression unit each, both done
        assert leases["predict"][1:] == (3, 3) and leases["score"][1:] == (3, 3)
        assert st.query("SELECT status FROM runs")[1] == [("done",)]
