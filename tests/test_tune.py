"""`harness tune-filter`: the Pareto front, the dev/test split, the choice, and a tiny real tuning run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.analyze.tune import choose, pareto_front, split_dev_test
from harness.config import RunConfig
from harness.errors import UserError
from harness.tune import expand_settings, setting_label
from tests.conftest import need_pack


def test_pareto_front() -> None:
    rate = [0.1, 0.2, 0.2, 0.5, 1.0, 0.3, math.nan]
    acc = [0.3, 0.5, 0.4, 0.5, 0.9, 0.6, 1.0]
    assert pareto_front(rate, acc).tolist() == [True, True, False, False, True, True, False]
    assert pareto_front([0.1, 0.1], [0.5, 0.5]).tolist() == [True, True]  # equal points are both on the front
    assert pareto_front([], []).tolist() == []
    r = np.random.default_rng(0).random(50)
    a = np.random.default_rng(1).random(50)
    f = pareto_front(r, a)
    for i in np.flatnonzero(f):  # no front point is dominated by any point
        assert not np.any((r <= r[i]) & (a >= a[i]) & ((r < r[i]) | (a > a[i])))
    for i in np.flatnonzero(~f):  # every other point is
        assert np.any((r <= r[i]) & (a >= a[i]) & ((r < r[i]) | (a > a[i])))


def test_split_dev_test_is_disjoint_seeded_and_by_group() -> None:
    ids = [f"s{i}" for i in range(20)]
    groups = [f"g{i // 2}" for i in range(20)]
    dev, test = split_dev_test(ids, groups, 0.5, seed=3)
    assert set(dev).isdisjoint(test) and sorted(dev + test) == sorted(ids)
    assert len(dev) == 10 and (dev, test) == split_dev_test(ids, groups, 0.5, seed=3)
    assert split_dev_test(ids, groups, 0.5, seed=4) != (dev, test)
    gd = {groups[ids.index(i)] for i in dev}
    assert gd.isdisjoint({groups[ids.index(i)] for i in test})  # a question group never straddles the split
    d1, t1 = split_dev_test(["a", "b"], ["x", "x"], 0.5, 0)
    assert (len(d1), len(t1)) == (2, 0)  # one group: it cannot be split
    with pytest.raises(ValueError):
        split_dev_test(ids, groups, 1.0, 0)


def test_choose_objectives() -> None:
    rows = [{"accuracy": 0.8, "rate": 1.0, "ib_score": 30.0}, {"accuracy": 0.7, "rate": 0.1, "ib_score": 5.0},
            {"accuracy": 0.7, "rate": 0.05, "ib_score": 9.0}, {"accuracy": None, "rate": 0.01, "ib_score": 1.0}]
    assert choose(rows) == 0
    assert choose(rows, max_rate=0.2) == 2  # equal accuracy: the lower rate
    assert choose(rows, max_rate=0.001) is None
    assert choose(rows, "ib") == 3
    with pytest.raises(ValueError):
        choose(rows, "f1")


def test_expand_settings_grid() -> None:
    s = expand_settings(["filter/full", {"model": "filter/truncate", "options": {"tokens": [64, 128]}},
                         {"model": "filter/ib-oracle", "options": {"budgets": [1, 2], "beta": [1, 10]}}])
    assert [setting_label(x) for x in s] == ["full", "truncate {tokens: 64}", "truncate {tokens: 128}",
                                             "ib-oracle {beta: 1, budgets: [1, 2]}",
                                             "ib-oracle {beta: 10, budgets: [1, 2]}"]


def _tiny_config(tmp_path: Path) -> RunConfig:
    from harness.config import parse_sweep_config

    return parse_sweep_config({
        "name": "tt", "task": {"name": "synthetic-multidoc", "size": 4, "seed": 0,
                               "options": {"n_distractors": 2, "context_tokens": 0}},
        "models": {"compressor": {"model": "filter/full", "tokenizer": "gguf/smollm2-135m"},
                   "predictor": {"model": "gguf/smollm2-135m", "dtype": "float32"},
                   "scorer": {"model": "gguf/smollm2-135m", "dtype": "float32"}},
        "arms": ["compressed"], "generation": {"predictor": {"max_new_tokens": 8},
                                               "compressor": {"max_new_tokens": 24}},
        "sweep": {"compressors": [{"model": "filter/truncate", "tokenizer": "gguf/smollm2-135m",
                                   "options": {"tokens": [8, 64]}},
                                  {"model": "filter/extractive", "tokenizer": "gguf/smollm2-135m",
                                   "options": {"sentences": 1}},
                                  {"model": "gguf/smollm2-135m", "dtype": "float32", "options": {"max_words": [20]}}],
                  "predictors": ["gguf/smollm2-135m"]},
        "output": {"dir": str(tmp_path / "out"), "store": str(tmp_path / "s.db"),
                   "cache": str(tmp_path / "c.sqlite")}})


@pytest.fixture(scope="module")
def tiny_tune(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunConfig, dict[str, Any]]:
    """One tiny real tuning run (smollm2, float32 scorer), shared by the tests that read it."""
    need_pack("smollm2-135m")
    from harness.tune import tune_filter

    tmp_path = tmp_path_factory.mktemp("tune")
    cfg = _tiny_config(tmp_path)
    return tmp_path, cfg, tune_filter(cfg, dev_fraction=0.5, split_seed=0, quiet=True)


def test_tune_filter_tiny_real_run(tiny_tune: tuple[Path, RunConfig, dict[str, Any]]) -> None:
    """Real smollm2 predictor and float32 scorer on 4 synthetic-multidoc groups: dev and test runs hold only their
    own samples, the choice is the best dev accuracy among dev rows (no test sample is read before it), the chosen
    settings run once on test, and the Pareto plot is written as PNG and SVG."""
    from harness.store import Store

    tmp_path, _, res = tiny_tune
    assert res["metric"] == "auto"
    t = res["tasks"]["synthetic-multidoc"]
    dev, test = set(t["dev_ids"]), set(t["test_ids"])
    assert dev and test and dev.isdisjoint(test)
    st = Store.open(str(tmp_path / "s.db"))
    cells = {c["cell_id"]: c["run_id"] for c in st.rows("cells")}
    for p in st.rows("predictions"):
        assert p["sample_id"] in (dev if cells[p["cell_id"]] == t["dev_run"] else test)
    terms = st.rows("compression_terms")
    st.close()
    assert terms  # every filter compression stored its IB terms
    assert len(t["dev"]) == 4 and all(r["n"] == len(dev) for r in t["dev"])
    i = choose(t["dev"], "accuracy")
    assert t["best"] == t["dev"][i]["setting"]
    assert set(t["test"]) == set(t["chosen"].values()) and all(r["n"] == len(test) for r in t["test"].values())
    assert {p.rsplit(".", 1)[1] for p in t["plots"]} >= {"png", "svg"}
    assert any(r["pareto"] for r in t["dev"])


def test_tune_filter_metric_contains(tiny_tune: tuple[Path, RunConfig, dict[str, Any]]) -> None:
    """`metric="contains"` on the stored tiny run (resumed: no new compression or prediction): every dev and test
    row's accuracy is the share of its cell's stored error-free predictions that `rescore.contains` marks right,
    the summary names the metric, a rerun adds no score rows, and an unknown metric is one UserError naming
    --metric and the choices."""
    from harness.analyze.rescore import contains, sample_from_row
    from harness.store import Store
    from harness.tune import format_summary, tune_filter

    tmp_path, cfg, _ = tiny_tune
    with pytest.raises(UserError, match=r"--metric bogus: .*contains"):
        tune_filter(cfg, metric="bogus", quiet=True)
    res = tune_filter(cfg, dev_fraction=0.5, split_seed=0, quiet=True, metric="contains")
    assert res["metric"] == "contains" and "metric contains" in format_summary(res)
    t = res["tasks"]["synthetic-multidoc"]
    st = Store.open(str(tmp_path / "s.db"))
    n_scores = len(st.rows("scores"))
    samples = {r["sample_id"]: sample_from_row(r) for r in st.rows("samples") if r["task"] == "synthetic-multidoc"}
    preds = st.rows("predictions")
    st.close()
    rows = [*t["dev"], *t["test"].values()]
    assert rows
    for r in rows:
        mine = [p for p in preds if p["cell_id"] == r["cell_id"] and p["error"] is None]
        assert mine
        share = sum(bool(contains(samples[p["sample_id"]], p["text"] or "").correct) for p in mine) / len(mine)
        assert r["accuracy"] == pytest.approx(share)
    tune_filter(cfg, dev_fraction=0.5, split_seed=0, quiet=True, metric="contains")
    st = Store.open(str(tmp_path / "s.db"))
    assert len(st.rows("scores")) == n_scores  # idempotent: the contains rows are stored once
    st.close()


def test_beta_grids_of_ib_learned_and_ib_oracle() -> None:
    """`beta: [1, 10]` on ib-learned is one dev setting per beta, each keeping its own beta (not the oracle's),
    with the oracle's budgets and the dev ids; on ib-oracle it is two settings (two reference rows), pure."""
    from harness.tune import dev_compressors

    s = expand_settings([{"model": "filter/ib-oracle", "options": {"beta": [1, 10], "budgets": [1, 2]}},
                         {"model": "filter/ib-learned", "options": {"beta": [1, 10]}},
                         "filter/ib-learned"])
    assert [setting_label(x) for x in s] == ["ib-oracle {beta: 1, budgets: [1, 2]}",
                                             "ib-oracle {beta: 10, budgets: [1, 2]}",
                                             "ib-learned {beta: 1}", "ib-learned {beta: 10}", "ib-learned"]
    comps = dev_compressors(s, ["a", "b"])
    learned = [c["options"] for c in comps if c["model"] == "filter/ib-learned"]
    assert [o["beta"] for o in learned] == [1, 10]  # its own beta; the plain one takes the first oracle's: a repeat
    assert all(o["budgets"] == [1, 2] and o["train_ids"] == ["a", "b"] for o in learned)
    assert len({setting_label(c) for c in comps}) == len(comps) == 4  # every setting its own row, once
    plain = dev_compressors([s[0], s[4]], ["a"])[1]["options"]
    assert plain["beta"] == 1 and plain["budgets"] == [1, 2]
    assert "train_ids" not in s[2]["options"]  # the settings themselves are left as they were


def test_lm_compressor_length_knob_keys_and_labels() -> None:
    """Pure: `max_words` appends one length line to the user prompt, enters the compressions' knob hash and the
    unit key only when set (a compressor without options keeps its keys), is checked, and labels the setting."""
    from harness.compressors.lm import lm_options, with_length
    from harness.config import DEFAULT_PROMPTS, parse_config
    from harness.pipeline.plan import compression_knob_hash, unit_key_fields

    p = DEFAULT_PROMPTS["compressor"]
    assert with_length(p, None) == p
    assert with_length(p, 20).user == p.user + "\nUse at most 20 words." and with_length(p, 20).system == p.system

    def cfg(options: dict[str, Any] | None) -> RunConfig:
        comp: dict[str, Any] = {"model": "gguf/smollm2-135m"}
        if options is not None:
            comp["options"] = options
        return parse_config({"task": {"name": "synthetic-multidoc", "size": 2},
                             "models": {"compressor": comp, "predictor": {"model": "gguf/smollm2-135m"}}})

    plain, empty, w20, w50 = cfg(None), cfg({}), cfg({"max_words": 20}), cfg({"max_words": 50})
    assert compression_knob_hash(plain) == compression_knob_hash(empty)
    assert unit_key_fields(plain) == unit_key_fields(empty)
    assert len({compression_knob_hash(c) for c in (plain, w20, w50)}) == 3
    assert compression_knob_hash(cfg({"max_words": 20, "ib_terms": True})) == compression_knob_hash(w20)
    with pytest.raises(UserError, match="max_words"):
        lm_options({"max_words": 0})
    with pytest.raises(UserError, match="takes only"):
        lm_options({"tokens": 3})
    with pytest.raises(Exception, match="takes only"):
        cfg({"sentences": 2})
    with pytest.raises(Exception, match="only a compressor takes options"):
        parse_config({"task": {"name": "synthetic-multidoc"},
                      "models": {"predictor": {"model": "gguf/smollm2-135m", "options": {"max_words": 3}}}})
    s = expand_settings([{"model": "gguf/smollm2-135m", "options": {"max_words": [20, 50]}}])
    assert [setting_label(x) for x in s] == ["abstractive smollm2-135m {max_words: 20}",
                                             "abstractive smollm2-135m {max_words: 50}"]


def test_tune_filter_abstractive_setting(tiny_tune: tuple[Path, RunConfig, dict[str, Any]]) -> None:
    """The LM compressor (smollm2, float32, 24 new tokens) with `max_words: [20]` on the tiny real run: tune-filter
    lists it as an abstractive setting with its dev numbers, its compressor prompt carries the length line, and
    every one of its compressions has IB terms rows from the scorer (as every filter compression)."""
    import json

    from harness.store import Store

    tmp_path, _, res = tiny_tune
    t = res["tasks"]["synthetic-multidoc"]
    [row] = [r for r in t["dev"] if r["kind"] == "abstractive"]
    assert row["setting"] == "abstractive smollm2-135m {max_words: 20}" and row["n"] == len(t["dev_ids"])
    assert row["rate"] is not None and row["ib_score"] is not None and "abstractive" in t["chosen"]
    st = Store.open(str(tmp_path / "s.db"))
    comps = [c for c in st.rows("compressions") if c["prompt_json"] and "Use at most 20 words." in c["prompt_json"]]
    assert len(comps) == len(t["dev_ids"]) + len(t["test_ids"])  # dev, then the chosen setting once on test
    msgs = json.loads(comps[0]["prompt_json"])
    assert "Use at most 20 words." in json.dumps(msgs)
    for c in comps:
        terms = st.compression_terms(c["compression_id"])
        assert {"conciseness_bits", "correctness_bits", "ib_score", "compression_rate", "abstain"} <= set(terms)
        assert terms["conciseness_bits"] > 0 and terms["abstain"] == float(c["text"].strip() == "")
    st.close()
