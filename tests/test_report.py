"""`harness report` and `harness compare` on stores built row by row with the Store API (planted numbers).

SQLite always; PostgreSQL too when HARNESS_TEST_PG_URL is set (skipped otherwise).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from harness.analyze.compare import compare_cells
from harness.analyze.frames import params_from_meta, parse_family, parse_size
from harness.analyze.report import build_report, default_out_dir
from harness.cli import main
from harness.records import Document, ModelIdentity, Sample, Usage
from harness.store import Store

PG_URL = os.environ.get("HARNESS_TEST_PG_URL", "").strip()
TASK = "syn"
RUN = "r1"
N = 10

# correctness per cell and sample (None: that sample errored in that cell)
PLAN: dict[tuple[str, str], list[int | None]] = {
    ("c1", "p1"): [1, 1, 1, 0, 0, 0, 0, 0, 0, None],  # s9: the prediction errored → 3/9
    ("c2", "p1"): [1, 1, 1, 1, 1, 0, 0, 0, None, 1],  # s8: c2's compression errored → 6/9
    ("c3", "p1"): [1, 1, 1, 1, 1, 1, 1, 1, 0, 0],  # 8/10
    ("c1", "p2"): [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],  # 5/10
    ("c2", "p2"): [1, 1, 1, 1, 1, 1, 1, 0, None, 0],  # 7/9
    ("c3", "p2"): [1, 1, 1, 1, 1, 1, 1, 1, 1, 0],  # 9/10
    ("-", "p1"): [1, 1, 1, 1, 1, 1, 1, None, 1, 0],  # full context; s7: prompt overflow (errors table only) → 8/9
    ("-", "p2"): [1] * 10,  # 10/10
}
SUMMARY_TOKENS = {"c1": 10, "c2": 20, "c3": 30}
CONTEXT_TOKENS = 100
MI_PROXY = {"c1": 1.0, "c2": 2.0, "c3": 3.0}
MI_SELF = {"c1": 1.5, "c2": 2.5, "c3": 3.5}
MODELS = {
    "c1": ("smollm2-135m", {"family": "smollm2", "n_params": 135_000_000}),
    "c2": ("qwen2.5-0.5b", {"size_b": 0.5}),
    "c3": ("Qwen/Qwen2.5-1.5B-Instruct", None),
    "p1": ("qwen2.5-coder-3b", {"params": "3B"}),
    "p2": ("llama-3.1-8b-instruct", None),
    "sc": ("proxy-scorer", None),
}


def _ident(name: str) -> ModelIdentity:
    return ModelIdentity("transformers", name, "rev", "bfloat16", "tmpl")


def cell_id(c: str, p: str) -> str:
    return f"{RUN}/{'full' if c == '-' else c}/{p}"


def build_store(url: str) -> dict[str, int]:
    """The planted store: 3 compressors × 2 predictors, 2 full-context cells, errors, usage and MI estimates."""
    with Store.open(url) as st:
        st.start_run(run_id=RUN, name="planted", config={"seed": 0}, package_versions={})
        ids = {k: st.model_id(_ident(name), meta) for k, (name, meta) in MODELS.items()}
        st.add_samples(
            TASK,
            [
                Sample(f"s{i}", "q?", (Document("d", f"text {i}"),), (str(i),), group_id="g0", answer_type="number")
                for i in range(N)
            ],
        )
        comp_ids: dict[tuple[str, int], int] = {}
        for c in ("c1", "c2", "c3"):
            for i in range(N):
                err = "CUDA OOM" if (c, i) == ("c2", 8) else None
                comp_ids[(c, i)] = st.add_compression(
                    compressor_model_id=ids[c], task=TASK, sample_id=f"s{i}", knob_hash="k", text="z",
                    sample_index=-1, n_tokens=None if err else SUMMARY_TOKENS[c], context_tokens=CONTEXT_TOKENS,
                    error=err, run_id=RUN, usage=Usage(CONTEXT_TOKENS, SUMMARY_TOKENS[c], 0.5),
                )  # fmt: skip
        for (c, p), plan in PLAN.items():
            cid = cell_id(c, p)
            st.upsert_cell(
                cell_id=cid, run_id=RUN, task=TASK, predictor_model_id=ids[p],
                arm="full-context" if c == "-" else "compressed", compressor_model_id=None if c == "-" else ids[c],
                knobs={"temperature": 0.0, "compressor": c},
            )  # fmt: skip
            for i, ok in enumerate(plan):
                sid = f"s{i}"
                if c == "-" and ok is None:  # an overflow: no prediction row, one errors-table row
                    st.add_error(run_id=RUN, stage="predict", message="prompt too long", ref_kind="full-context",
                                 sample_id=sid)  # fmt: skip
                    continue
                if c != "-" and (c, i) == ("c2", 8):  # errored compression: the pipeline makes no prediction
                    continue
                pid = st.add_prediction(
                    cell_id=cid, sample_id=sid, arm="full-context" if c == "-" else "compressed", text="a",
                    compression_id=None if c == "-" else comp_ids[(c, i)], error="timeout" if ok is None else None,
                    usage=Usage(50, 2, 0.25), dollars=0.001 if p == "p1" else None,
                )  # fmt: skip
                if ok is not None:
                    st.add_score(prediction_id=pid, metric="numeric_match", value=float(ok), correct=bool(ok))
        for c in ("c1", "c2", "c3"):
            for scorer, bits in ((ids["sc"], MI_PROXY[c]), (ids[c], MI_SELF[c])):
                st.add_mi_estimate(
                    run_id=RUN, task=TASK, compressor_model_id=ids[c], scorer_model_id=scorer, mode="conditional",
                    n_contexts=10, n_samples=2, bits=bits, ci_lo=bits - 0.2, ci_hi=bits + 0.2,
                    bits_per_token=bits / SUMMARY_TOKENS[c], saturated_fraction=0.1,
                )  # fmt: skip
            st.add_mi_estimate(  # a per-group estimate: never used as the pooled one
                run_id=RUN, task=TASK, group_id="g0", compressor_model_id=ids[c], scorer_model_id=ids["sc"],
                mode="conditional", bits=99.0,
            )  # fmt: skip
        st.finish_run(RUN)
    return ids


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "planted.db")
        return
    if not PG_URL:
        pytest.skip("HARNESS_TEST_PG_URL not set")
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL unreachable: {str(e)[:100]}")
    schema = "t_" + uuid.uuid4().hex[:12]
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            sep = "&" if "?" in PG_URL else "?"
            yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def _planted_acc(plan: list[int | None]) -> tuple[int, int, int]:
    ok = [x for x in plan if x is not None]
    return len(ok), sum(ok), sum(x is None for x in plan)


def _row(md: str, cell: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {cell} |"))
    return [x.strip() for x in line.strip().strip("|").split("|")]


def _split(line: str) -> list[str]:
    return [x.strip() for x in line.strip().strip("|").split("|")]


def _table(md: str, head_start: str) -> dict[str, dict[str, str]]:
    """The markdown table whose header line starts with `head_start`: {first cell: {column: value}}."""
    lines = md.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(head_start))
    head = _split(lines[i])
    out = {}
    for ln in lines[i + 2:]:
        if not ln.startswith("|"):
            break
        row = _split(ln)
        out[row[0]] = dict(zip(head, row, strict=True))
    return out


# ----------------------------------------------------------------------------- report


def test_report_cell_table_matches_planted_numbers(store_url, tmp_path, capsys):
    build_store(store_url)
    out = tmp_path / "rep"
    assert main(["report", store_url, "--out", str(out)]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    cells = pd.read_csv(out / "cells.csv").set_index("cell_id")
    main_table, key, cost = _table(md, "| cell | n |"), _table(md, "| cell | cell id |"), _table(md, "| cell | calls |")
    for (c, p), plan in PLAN.items():
        n, k, errors = _planted_acc(plan)
        cid = cell_id(c, p)
        r = cells.loc[cid]
        assert (r["n"], r["correct"], r["errors"]) == (n, k, errors), cid
        assert r["accuracy"] == pytest.approx(k / n)
        # the tables are keyed by short readable labels (compressor → predictor), the key maps them to cell ids
        label = r["label"]
        assert "/" not in label and " → " in label and key[label]["cell id"] == cid
        row = main_table[label] | key[label] | cost[label]
        assert row["n"] == str(n) and row["errors"] == str(errors)
        assert row["accuracy [95% CI]"].startswith(f"{k / n:.3f} [")
        if c != "-":
            assert r["summary_tokens"] == pytest.approx(SUMMARY_TOKENS[c])
            assert r["token_ratio"] == pytest.approx(SUMMARY_TOKENS[c] / CONTEXT_TOKENS)
            assert r["mi_bits"] == pytest.approx(MI_PROXY[c])  # the common proxy, not self and not the group row
            assert row["MI scorer"].startswith("proxy-scorer")
            mi_cell = f"{MI_PROXY[c]:.2f} [pop {MI_PROXY[c] - 0.2:.2f}, {MI_PROXY[c] + 0.2:.2f}]"  # no MC se stored
            assert row["MI bits ±MC [pop 95% CI]"] == mi_cell
        else:
            assert row["summary_tok"] == "-" and row["MI bits ±MC [pop 95% CI]"] == "-"
        # dollars only where planted (p1's predictions), '-' elsewhere; nothing was cached, so actual = as if uncached
        assert (row["$ as if uncached"] == "-") == (p == "p2")
        assert row["$ actual"] == row["$ as if uncached"] and row["seconds actual"] == row["seconds as if uncached"]
    # the stage of each error
    assert cells.loc[cell_id("c1", "p1"), "errors_predict"] == 1
    assert cells.loc[cell_id("c2", "p1"), "errors_compress"] == 1
    assert cells.loc[cell_id("-", "p1"), "errors_predict"] == 1
    # Wilson interval from harness.metrics
    from harness.metrics import accuracy_with_ci

    _, lo, hi = accuracy_with_ci([True] * 3 + [False] * 6)
    assert cells.loc[cell_id("c1", "p1"), "acc_lo"] == pytest.approx(lo)
    assert cells.loc[cell_id("c1", "p1"), "acc_hi"] == pytest.approx(hi)
    # predictor cost: 9 or 10 predictions of 50 + 2 tokens; compressor cost counted per compression read
    r = cells.loc[cell_id("c3", "p1")]
    assert r["pred_prompt_tokens"] == 500 and r["comp_completion_tokens"] == 10 * 30
    assert r["dollars"] == pytest.approx(0.01)
    assert "scored by proxy-scorer, a common proxy" in md


def test_report_sections_sizes_and_not_identifiable(store_url, tmp_path):
    build_store(store_url)
    rep = build_report(store_url, tmp_path / "rep", n_boot=50)
    md = rep.path.read_text()
    # sizes from meta (n_params, size_b, params text) and from names
    for name, size in (("smollm2-135m", "135M"), ("qwen2.5-0.5b", "500M"), ("Qwen/Qwen2.5-1.5B-Instruct", "1.5B"),
                       ("qwen2.5-coder-3b", "3B"), ("llama-3.1-8b-instruct", "8B")):  # fmt: skip
        assert re.search(rf"\| {re.escape(name)} \| [a-z/]+ \| [^|]+ \| {size} \|", md), name
    # 3 compressors per predictor: no rate–distortion fit
    assert md.count("not identifiable (3 points") == 2
    assert "C = " not in md
    for f in ("scaling-accuracy.png", "scaling-mi-bits.png", "scaling-bits-per-token.png",
              "scaling-accuracy-predictor.png"):  # fmt: skip
        assert (rep.folder / f).stat().st_size > 1000 and f"]({f})" in md
    assert len(list(rep.folder.glob("rd-*.png"))) == 2
    # correlations over 3 points per predictor and 6 over both
    assert re.search(r"\| syn, all predictors \| MI bits \| 6 \|", md)
    assert re.search(r"\| syn, qwen2.5-coder-3b \| MI bits \| 3 \|", md)
    assert "| syn, all predictors | bits/token | 6 | undefined (x or accuracy is constant) |" in md  # all 0.1
    # factor importance: two families (smollm2, qwen2.5), three compressor sizes, two predictor sizes
    sec = md.split("## Factor importance", 1)[1]
    assert "n = 57 predictions, 10 samples" in sec
    for f in ("compressor_family", "log2_compressor_params", "log2_predictor_params"):
        assert re.search(rf"\| {f} \| [\d.]+ \| 1 \|", sec), f  # an LR test row
    assert "is confounded" not in sec  # nothing collinear was dropped ...
    # ... but no compressor size occurs in two families, and the report says so
    assert "family and size are confounded: no compressor size occurs in two families (qwen2.5: 500M, 1.5B; " \
           "smollm2: 135M)" in sec
    assert "### Errors by stage" in md
    # the run filter and an unknown run
    rep2 = build_report(store_url, tmp_path / "rep2", run_id=RUN, n_boot=10)
    assert len(rep2.cells) == len(PLAN)
    assert main(["report", store_url, "--out", str(tmp_path / "x"), "--run", "nope"]) == 2


def test_report_rate_distortion_fit_with_enough_points(tmp_path):
    url = str(tmp_path / "rd.db")
    c, b, d0 = 0.7, 0.9, 0.1
    bits = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0]
    n = 40
    with Store.open(url) as st:
        st.start_run(run_id="rd", package_versions={})
        pred = st.model_id(_ident("pred-7b"))
        for j, r in enumerate(bits):
            comp = st.model_id(_ident(f"fam{j}-{j + 1}00m"))  # one size per family: confounded
            k = round(n * (1 - (c * np.exp(-b * r) + d0)))
            cid = f"rd/{j}"
            st.upsert_cell(cell_id=cid, run_id="rd", task="t", predictor_model_id=pred, arm="compressed",
                           compressor_model_id=comp)  # fmt: skip
            for i in range(n):
                pid = st.add_prediction(cell_id=cid, sample_id=f"s{i}", arm="compressed", text="x")
                st.add_score(prediction_id=pid, metric="em", value=float(i < k), correct=i < k)
            st.add_mi_estimate(run_id="rd", task="t", compressor_model_id=comp, scorer_model_id=comp,
                               mode="conditional", bits=r)  # fmt: skip
    rep = build_report(url, tmp_path / "out", n_boot=100)
    md = rep.path.read_text()
    m = re.search(r"C = ([\d.]+) \[.*?\], b = ([\d.]+) \[.*?\] per bit, D0 = ([\d.]+) \[", md)
    assert m, md.split("## Rate–distortion")[1][:800]
    assert float(m.group(1)) == pytest.approx(c, abs=0.1)
    assert float(m.group(2)) == pytest.approx(b, abs=0.3)
    assert float(m.group(3)) == pytest.approx(d0, abs=0.05)
    assert "not identifiable" not in md
    # each compressor is scored by itself only: no common scorer, and the report says so
    assert "no scorer is common to all compressors" in md
    sec = md.split("## Factor importance", 1)[1]
    assert "log2_compressor_params is confounded with compressor_family" in sec
    assert "log2_predictor_params is constant" in sec


def test_report_on_a_plain_run_explains_missing_sections(tmp_path):
    url = str(tmp_path / "plain.db")
    with Store.open(url) as st:
        st.start_run(run_id="p", package_versions={})
        comp = st.model_id(_ident("tiny-compressor"))
        pred = st.model_id(_ident("tiny-predictor"))
        st.upsert_cell(cell_id="p/c", run_id="p", task="t", predictor_model_id=pred, arm="compressed",
                       compressor_model_id=comp)  # fmt: skip
        st.upsert_cell(cell_id="p/n", run_id="p", task="t", predictor_model_id=pred, arm="no-context")
        for i in range(4):
            cid = st.add_compression(compressor_model_id=comp, task="t", sample_id=f"s{i}", knob_hash="", text="z",
                                     token_ids=[1, 2])  # fmt: skip
            p1 = st.add_prediction(cell_id="p/c", sample_id=f"s{i}", arm="compressed", text="a", compression_id=cid)
            p2 = st.add_prediction(cell_id="p/n", sample_id=f"s{i}", arm="no-context", text="a")
            st.add_score(prediction_id=p1, metric="em", value=1.0, correct=i < 3)
            if i < 3:  # s3 of the no-context cell has no score
                st.add_score(prediction_id=p2, metric="em", value=0.0, correct=False)
    out = tmp_path / "rep"
    assert main(["report", url, "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    cells = pd.read_csv(out / "cells.csv").set_index("cell_id")
    assert (cells.loc["p/c", "n"], cells.loc["p/c", "correct"], cells.loc["p/c", "errors"]) == (4, 3, 0)
    assert (cells.loc["p/n", "n"], cells.loc["p/n", "errors"], cells.loc["p/n", "errors_score"]) == (3, 1, 1)
    assert "No pooled MI estimates" in md
    assert md.count("Skipped: too little data") == 4
    assert "not identifiable (0 points)" in md
    assert "too few points (0 < 3)" in md
    assert "## Factor importance" in md and "No model fitted" in md
    # no usage rows: the cost is unknown, not zero
    assert "No usage rows in the store: cost unknown." in md
    # an empty store works too
    empty = str(tmp_path / "empty.db")
    Store.open(empty).close()
    assert main(["report", empty, "--out", str(tmp_path / "e")]) == 0
    assert "No cells" in (tmp_path / "e" / "report.md").read_text()


def test_metrics_without_a_verdict_are_reported_and_compared(tmp_path, capsys):
    url = str(tmp_path / "bpb.db")
    bpb = {"full": [1.0, 1.2, 0.8, 1.0], "none": [2.0, 2.1, 1.9, None]}  # none/s3: no score row → an error
    with Store.open(url) as st:
        st.start_run(run_id="d", package_versions={})
        pred = st.model_id(_ident("pred-1b"))
        for arm, vals in bpb.items():
            st.upsert_cell(cell_id=f"d/{arm}", run_id="d", task="fineweb", predictor_model_id=pred, arm=arm)
            for i, v in enumerate(vals):
                pid = st.add_prediction(cell_id=f"d/{arm}", sample_id=f"s{i}", arm=arm, text="")
                if v is not None:
                    st.add_score(prediction_id=pid, metric="bits_per_byte", value=v, correct=None)
    out = tmp_path / "rep"
    assert main(["report", url, "--out", str(out)]) == 0
    cells = pd.read_csv(out / "cells.csv").set_index("cell_id")
    assert (cells.loc["d/full", "n"], cells.loc["d/full", "n_value"], cells.loc["d/full", "errors"]) == (0, 4, 0)
    assert cells.loc["d/full", "value_mean"] == pytest.approx(1.0)
    assert (cells.loc["d/none", "n_value"], cells.loc["d/none", "errors_score"]) == (3, 1)
    assert cells.loc["d/none", "value_mean"] == pytest.approx(2.0)
    md = (out / "report.md").read_text()
    assert "### Metrics without a right answer" in md and "| full → pred-1b | bits_per_byte | 4 | 1.000 [" in md
    res = compare_cells(url, "d/full", "d/none", n_boot=200)
    assert res.n_pairs == 3 and res.dropped_b == 1 and res.diff is None
    assert res.value is not None and res.value[0] == "bits_per_byte"
    assert res.value[3].diff == pytest.approx(1.0 - 2.0)  # s0..s2: (1.0 + 1.2 + 0.8)/3 − (2.0 + 2.1 + 1.9)/3
    assert main(["compare", url, "d/full", "d/none"]) == 0
    rows = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]  # a rich table
    assert any(r.startswith("bits_per_byte (mean) 1.000 2.000 -1.000 [") for r in rows)


def test_size_and_family_parsing_and_default_dir():
    assert params_from_meta({"n_params_total": 1_543_714_304, "n_params": 1_300_000_000}) == 1_543_714_304
    assert params_from_meta({"billions": 0.135}) == pytest.approx(135e6)
    assert params_from_meta({"size_b": 7}) == 7e9 and params_from_meta({"params": "135M"}) == 135e6
    assert params_from_meta({"family": "llama"}) is None
    assert parse_size("smollm2-135m") == 135e6
    assert parse_size("HuggingFaceTB/SmolLM2-135M-Instruct") == 135e6
    assert parse_size("qwen2.5-coder-0.5b") == 0.5e9
    assert parse_size("/m/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf") == 1.5e9
    assert parse_size("gpt-4o-mini") is None and parse_size("phi-3-mini-4k") is None
    assert parse_family("qwen2.5-coder-0.5b") == "qwen2.5-coder"
    assert parse_family("Qwen/Qwen2.5-1.5B-Instruct") == "qwen2.5"
    assert parse_family("gpt-4o-mini-instruct") == "gpt-4o-mini"
    assert str(default_out_dir("results/store.db")) == "results/report-store"
    assert str(default_out_dir("postgresql://u:pw@h:5432/mydb?x=1")) == "results/report-mydb"


# ----------------------------------------------------------------------------- compare


def test_compare_planted_pairs_on_sample_ids(store_url, capsys):
    build_store(store_url)
    a, b = cell_id("c3", "p1"), cell_id("c1", "p1")
    res = compare_cells(store_url, a, b, n_boot=500)
    # c1/p1 errored on s9: 9 pairs; A right / B wrong on s3..s7, never the reverse
    assert res.matched_on == "sample id" and res.n_pairs == 9
    assert (res.dropped_errors, res.dropped_a, res.dropped_b) == (1, 0, 1)
    assert (res.a_only, res.b_only) == (5, 0)
    assert res.mcnemar_p == pytest.approx(2 * 0.5**5)
    assert res.diff is not None and res.diff.diff == pytest.approx(5 / 9)
    assert res.diff.lo <= 5 / 9 <= res.diff.hi and res.diff.lo > 0
    assert res.acc_a == pytest.approx(8 / 9) and res.acc_b == pytest.approx(3 / 9)
    assert res.means["summary tokens"] == (30.0, 10.0)
    assert res.mi["MI bits"] == (MI_PROXY["c3"], MI_PROXY["c1"])
    assert main(["compare", store_url, a, b]) == 0
    out = capsys.readouterr().out
    assert "pairs: 9 matched on sample id; dropped for errors: 1 (A errored 0, B errored 1)" in out
    rows = [" ".join(line.split()) for line in out.splitlines()]  # the CLI draws the table with rich
    assert any(r.startswith("accuracy 0.889 0.333 +0.556 [") for r in rows)
    assert "exact McNemar p = 0.0625 (A right/B wrong 5, A wrong/B right 0)" in out
    assert "summary tokens (mean) 30.00 10.00 +20.00" in rows
    assert "MI bits 3.000 1.000 +2.000" in rows


def test_compare_shared_compressions_and_error_only_samples(store_url):
    build_store(store_url)
    # two predictors reading the same compressions of c1
    res = compare_cells(store_url, cell_id("c1", "p1"), cell_id("c1", "p2"), n_boot=200)
    assert res.matched_on == "sample id and compression"
    assert res.n_pairs == 9 and res.dropped_a == 1 and (res.a_only, res.b_only) == (0, 2)
    assert res.mcnemar_p == pytest.approx(0.5) and res.diff.diff == pytest.approx(-2 / 9)
    # the full-context cell's s7 exists only as an errors-table row: a dropped pair, not an unmatched one
    res = compare_cells(store_url, cell_id("-", "p1"), cell_id("-", "p2"), n_boot=200)
    assert res.n_pairs == 9 and res.dropped_a == 1 and res.unmatched_a == res.unmatched_b == 0
    assert (res.a_only, res.b_only) == (0, 1)
    # c2 skipped s8 (its compression errored) while c3 has it
    res = compare_cells(store_url, cell_id("c2", "p2"), cell_id("c3", "p2"), n_boot=200)
    assert res.n_pairs == 9 and res.dropped_a == 1 and res.dropped_b == 0


def test_compare_unknown_cell_is_a_one_line_error(store_url, capsys):
    build_store(store_url)
    assert main(["compare", store_url, "no/such/cell", cell_id("c1", "p1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown cell 'no/such/cell'") and "\n" not in err
    assert main(["compare", store_url, cell_id("c1", "p1"), cell_id("c1", "p1")]) == 2


# ----------------------------------------------------------------------------- the one cell summariser


def _usage(pre: str, prompt: int, completion: int, seconds: float, cached: bool, flops: float) -> dict[str, object]:
    return {f"{pre}prompt_tokens": prompt, f"{pre}completion_tokens": completion, f"{pre}seconds": seconds,
            f"{pre}cached": cached, f"{pre}flops": flops}  # fmt: skip


def test_summarize_cell_counts_means_and_cost():
    """Pure logic on hand-made sample rows (no store, no model): errors are never wrong answers, accuracy is over
    the answered samples with a verdict, token_ratio is the mean of per-row ratios, a compression read twice is
    costed once, and cache hits are free in the actual cost."""
    from harness.analyze.frames import summarize_cell
    from harness.metrics import accuracy_with_ci, mean_with_ci

    rows = pd.DataFrame([
        {"sample_id": "s0", "status": "ok", "correct": True, "metric": "em", "flags_json": "[]", "compression_id": 1,
         "summary_tokens": 10, "context_tokens": 100, **_usage("pred_", 50, 2, 0.5, False, 1e9),
         **_usage("comp_", 100, 10, 1.0, False, 1e10)},
        {"sample_id": "s1", "status": "ok", "correct": False, "metric": "em", "flags_json": '["unparseable"]',
         "compression_id": 1, "summary_tokens": 10, "context_tokens": 100, "prediction_truncated": True,
         **_usage("pred_", 50, 2, 0.3, True, 1e9), **_usage("comp_", 100, 10, 1.0, False, 1e10)},
        {"sample_id": "s2", "status": "error", "error_stage": "predict", "compression_id": 2, "summary_tokens": 30,
         "context_tokens": 50, "compression_truncated": True, **_usage("comp_", 100, 30, 2.0, True, 2e10)},
        {"sample_id": "s3", "status": "error", "error_stage": "compress", "compression_id": 3,
         "compression_error": "CUDA OOM", "context_tokens": 100},
        {"sample_id": "s4", "status": "value", "metric": "bits_per_byte", "value": 1.5, "flags_json": ["x"]},
        {"sample_id": "s5", "status": "value", "metric": "bits_per_byte", "value": 2.5},
    ])  # fmt: skip
    s = summarize_cell(rows)
    assert (s["samples"], s["errors"], s["answered"], s["n"], s["correct"], s["scored"]) == (6, 2, 4, 2, 1, 4)
    assert (s["errors_compress"], s["errors_predict"], s["errors_score"]) == (1, 1, 0)
    assert (s["accuracy"], s["acc_lo"], s["acc_hi"]) == pytest.approx(accuracy_with_ci([True, False]))
    assert (s["unparseable"], s["truncated"], s["metric"]) == (1, 2, "em")
    assert s["summary_tokens"] == pytest.approx(50 / 3)
    assert s["token_ratio"] == pytest.approx((0.1 + 0.1 + 0.6) / 3)  # not 50/250
    assert (s["n_value"], s["value_metric"]) == (2, "bits_per_byte")
    assert (s["value_mean"], s["value_lo"], s["value_hi"]) == pytest.approx(mean_with_ci([1.5, 2.5]))
    assert (s["pred_calls"], s["pred_cached"], s["pred_prompt_tokens"]) == (2, 1, 100)
    assert (s["comp_calls"], s["comp_cached"], s["comp_completion_tokens"]) == (2, 1, 40)  # compression 1 once
    assert s["pred_seconds_actual"] == pytest.approx(0.5) and s["comp_seconds_actual"] == pytest.approx(1.0)
    assert s["usage_rows"] == 4 and s["cached_calls"] == 2 and s["tokens"] == 200 + 40 + 100 + 4
    assert s["seconds"] == pytest.approx(0.5 + 0.3 + 1.0 + 2.0)
    assert s["flops"] == pytest.approx(2e9 + 3e10) and s["flops_actual"] == pytest.approx(1e9 + 1e10)
    assert s["dollars"] is None and s["dollars_actual"] is None
    empty = summarize_cell(pd.DataFrame(columns=["status"]))
    assert (empty["samples"], empty["accuracy"], empty["token_ratio"], empty["tokens"]) == (0, None, None, None)


def test_sweep_table_is_the_report_cell_summary(store_url):
    """`harness sweep`'s table comes from the report's summariser: n counts every sample of the cell, errors
    include an errored compression and an overflow that left no prediction row, accuracy is the report's."""
    from harness.analyze.frames import load_cells
    from harness.analyze.render import fmt_accuracy
    from harness.pipeline.sweep import cell_table

    build_store(store_url)
    with Store.open(store_url) as st:
        table = cell_table(st, RUN)
    assert table.splitlines()[0] == "| cell | n | accuracy [95% CI] | errors | summary_tok | token_ratio |"
    cells = load_cells(store_url, RUN).set_index("cell_id")
    for (c, p), plan in PLAN.items():
        _, _, errors = _planted_acc(plan)
        cid = cell_id(c, p)
        row = _row(table, cid)
        assert row == [cid, str(N), fmt_accuracy(cells.loc[cid]), str(errors),
                       "-" if c == "-" else f"{SUMMARY_TOKENS[c]:.1f}",
                       "-" if c == "-" else f"{SUMMARY_TOKENS[c] / CONTEXT_TOKENS:.3f}"], cid  # fmt: skip
        assert cells.loc[cid, "samples"] == N and cells.loc[cid, "answered"] == N - errors


def test_analyze_modules_import_no_private_names():
    """No module of `harness` imports a private (_-prefixed) name from `harness.analyze`, and no analyze module
    imports one from anywhere in `harness`."""
    import ast
    from pathlib import Path

    import harness

    root = Path(harness.__file__).parent
    bad = []
    for path in root.rglob("*.py"):
        in_analyze = path.parent.name == "analyze"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness"):
                if in_analyze or node.module.startswith("harness.analyze"):
                    bad += [f"{path.relative_to(root)}: {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_")]  # fmt: skip
    assert not bad, bad


# ----------------------------------------------------------------------------- plots, labels, HTML, cost, examples


def test_line_figure_shows_every_series_with_a_marker_dodged_with_size_ticks(tmp_path):
    """Three series on the same x (they used to hide under each other): each has its own marker, they sit at
    different x (dodged), the legend lists exactly the series and reference lines, ticks read 135M / 0.5B / 1.5B,
    and PNG, SVG and PDF are written."""
    from harness.analyze.render import RefLine, dodge_factors, fmt_size, line_figure, line_plot

    # sizes as papers name them, also from exact counts (Qwen2.5-0.5B has 494M parameters, 1.5B has 1.54B)
    assert [fmt_size(x) for x in (1.35e8, 3.6e8, 4.94e8, 1.54e9, 7.6e9)] == ["135M", "360M", "0.5B", "1.5B", "7.6B"]

    xs = [1.35e8, 5e8, 1.5e9]
    series = {name: [(x, 0.5, 0.4, 0.6) for x in xs] for name in ("a", "b", "c")}
    refs = [RefLine("full-context → p", 0.9, 0.8, 0.95), RefLine("no-context → p", 0.1, None, None, ":")]
    fig = line_figure(series, "compressor parameters", "accuracy", "t", refs=refs, ylim=(-0.02, 1.02))
    ax = fig.axes[0]
    conts = ax.containers
    assert len(conts) == 3
    markers = [c.lines[0].get_marker() for c in conts]
    assert all(m not in (None, "None", "", " ") for m in markers) and len(set(markers)) == 3
    x_at_first = [c.lines[0].get_xdata()[0] for c in conts]
    assert len(set(x_at_first)) == 3  # dodged apart, all near 135M
    assert np.allclose(x_at_first, np.array(xs[0]) * dodge_factors(3))
    assert all(c.has_yerr for c in conts)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(legend) == sorted(["a", "b", "c", "full-context → p", "no-context → p"])
    # the legend sits off the data: to the right of the axes
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.bbox.x1
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["135M", "0.5B", "1.5B"]
    assert ax.get_ylim() == pytest.approx((-0.02, 1.02))
    # two reference lines at one y interleave their dashes (offsets differ), so neither hides the other
    two = line_figure(series, "x", "y", "t", refs=[RefLine("n → p1", 0.25), RefLine("n → p2", 0.25)]).axes[0]
    dashes = [ln.get_dashes() if hasattr(ln, "get_dashes") else ln._dash_pattern for ln in two.get_lines()[-2:]]
    assert dashes[0] != dashes[1]
    files = line_plot(tmp_path / "x.png", series, "x", "y", "t")
    assert [f.name for f in files] == ["x.png", "x.svg", "x.pdf"]
    assert all(f.stat().st_size > 1000 for f in files)
    assert (tmp_path / "x.pdf").read_bytes()[:5] == b"%PDF-" and b"<svg" in (tmp_path / "x.svg").read_bytes()


def test_mi_plot_has_ceiling_and_ci_bars_and_rd_plot_has_both_intervals(tmp_path):
    """The MI plot of the planted store draws the log2 N line and error bars from 0; each R–D plot has error bars
    on R and on D, D on [0, 1], one legend entry per compressor; every PNG has its SVG and PDF."""
    from harness.analyze.render import RDPoint, rd_figure
    from harness.analyze.stats import fit_rate_distortion

    url = str(tmp_path / "p.db")
    build_store(url)
    rep = build_report(url, tmp_path / "rep", n_boot=20)
    for png in rep.plots:
        assert png.with_suffix(".svg") in rep.files and png.with_suffix(".pdf") in rep.files
        assert png.with_suffix(".svg").stat().st_size > 1000 and png.with_suffix(".pdf").stat().st_size > 1000
    md = rep.path.read_text()
    assert "| syn | smollm2-135m | proxy-scorer | conditional | r1 | 10 | 2 | 1.00 [pop 0.80, 1.20] | 3.32 | - |" in md
    pts = [RDPoint(f"c{i}", r, r - 0.2, r + 0.2, d, max(d - 0.1, 0), min(d + 0.1, 1)) for i, (r, d) in
           enumerate([(1.0, 0.7), (2.0, 0.4), (3.0, 0.2)])]  # fmt: skip
    fig = rd_figure(pts, fit_rate_distortion([1, 2, 3], [0.7, 0.4, 0.2]), "t", ceiling=np.log2(10))
    ax = fig.axes[0]
    assert len(ax.containers) == 3 and all(c.has_xerr and c.has_yerr for c in ax.containers)
    assert ax.get_ylim() == pytest.approx((-0.02, 1.02)) and ax.get_xlim()[0] == 0.0
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:1] == ["log2 N = 3.32 bits"] or "log2 N = 3.32 bits" in legend
    assert {"c0", "c1", "c2"} <= set(legend)


def test_html_report_is_one_self_contained_file(tmp_path):
    """report.html sits beside report.md, holds every plot inline (SVG data URIs) and no external reference."""
    import re as _re

    url = str(tmp_path / "p.db")
    build_store(url)
    rep = build_report(url, tmp_path / "rep", n_boot=20)
    assert rep.html == rep.folder / "report.html"
    html = rep.html.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html and "<h2>Cells</h2>" in html
    srcs = _re.findall(r'<img src="([^"]*)"', html)
    assert len(srcs) == len(rep.plots) >= 6
    assert all(s.startswith("data:image/svg+xml;base64,") for s in srcs)
    assert not _re.search(r'(src|href)="(?!data:|#)', html)  # no file, http or other external reference
    assert "http://" not in html and "https://" not in html and "<link" not in html and "<script" not in html
    # the cell labels and numbers are the markdown's
    assert "smollm2-135m → qwen2.5-coder-3b" in html and "0.333 [0.12, 0.65]" in html


def test_cached_rerun_costs_nothing_actual_and_keeps_the_as_if_uncached_cost(tmp_path):
    """Run r2 reads the compressions r1 made (from the store) and gets its answers from the response cache: its
    actual seconds, FLOPs and dollars are 0, and the as-if-uncached cost is r1's."""
    url = str(tmp_path / "c.db")
    with Store.open(url) as st:
        comp = st.model_id(_ident("smollm2-135m"))
        pred = st.model_id(_ident("qwen2.5-coder-0.5b"))
        st.add_samples(TASK, [Sample(f"s{i}", "q?", (Document("d", "t"),), ("1",)) for i in range(3)])
        for run, cached in (("r1", False), ("r2", True)):
            st.start_run(run_id=run, package_versions={})
            st.upsert_cell(cell_id=f"{run}/c", run_id=run, task=TASK, predictor_model_id=pred, arm="compressed",
                           compressor_model_id=comp)  # fmt: skip
            for i in range(3):
                cid = st.add_compression(compressor_model_id=comp, task=TASK, sample_id=f"s{i}", knob_hash="k",
                                         text="z", n_tokens=5, context_tokens=50, run_id="r1",
                                         usage=Usage(50, 5, 2.0) if run == "r1" else None, flops=1e9,
                                         dollars=0.01)  # fmt: skip
                pid = st.add_prediction(cell_id=f"{run}/c", sample_id=f"s{i}", arm="compressed", text="1",
                                        compression_id=cid, usage=Usage(20, 1, 0.5, cached=cached), flops=2e8,
                                        dollars=0.002)  # fmt: skip
                st.add_score(prediction_id=pid, metric="em", value=1.0, correct=True)
            st.finish_run(run)
    rep = build_report(url, tmp_path / "rep", n_boot=10)
    c = rep.cells.set_index("cell_id")
    assert c.loc["r1/c", "flops_actual"] == pytest.approx(3 * 1e9 + 3 * 2e8)
    assert c.loc["r1/c", "seconds_actual"] == pytest.approx(3 * 2.0 + 3 * 0.5)
    for k in ("seconds_actual", "flops_actual", "dollars_actual"):
        assert c.loc["r2/c", k] == 0, k
    assert c.loc["r2/c", "flops"] == pytest.approx(c.loc["r1/c", "flops"])
    assert c.loc["r2/c", "dollars"] == pytest.approx(3 * 0.01 + 3 * 0.002)
    cost = _table(rep.path.read_text(), "| cell | calls |")
    r2 = cost[c.loc["r2/c", "label"]]
    assert (r2["seconds actual"], r2["FLOPs actual"], r2["$ actual"]) == ("0.0", "0", "0")
    assert r2["FLOPs as if uncached"] == "3.600e+09" and r2["calls"] == "6 (6 cached)"
    assert c.loc["r1/c", "label"] != c.loc["r2/c", "label"]  # the same pair in two runs: told apart by run


def test_examples_are_seeded_and_show_prompts_where_stored(tmp_path):
    """The examples section shows the same seeded samples for every cell and on every rebuild, independent of row
    order; a stored prompt is shown, a missing one (NULL prompt_json) is left out."""
    from harness.analyze.examples import pick_samples, prompt_text

    ids = [f"s{i}" for i in range(20)]
    assert pick_samples(ids, 3, seed=1) == pick_samples(list(reversed(ids)), 3, seed=1)
    assert pick_samples(ids, 3, seed=1) != pick_samples(ids, 3, seed=2)
    assert len(pick_samples(ids, 3)) == 3 and pick_samples(ids, 30) == pick_samples(ids, 20)
    assert prompt_text('{"messages": [{"role": "user", "content": "hi"}]}') == "[user]\nhi"
    assert prompt_text(None) is None
    url = str(tmp_path / "e.db")
    with Store.open(url) as st:
        st.start_run(run_id="e", package_versions={})
        comp = st.model_id(_ident("smollm2-135m"))
        pred = st.model_id(_ident("qwen2.5-coder-0.5b"))
        st.add_samples(TASK, [Sample(f"s{i}", f"question {i}?", (Document("d", "t"),), (str(i),)) for i in range(8)])
        st.upsert_cell(cell_id="e/c", run_id="e", task=TASK, predictor_model_id=pred, arm="compressed",
                       compressor_model_id=comp)  # fmt: skip
        st.upsert_cell(cell_id="e/n", run_id="e", task=TASK, predictor_model_id=pred, arm="no-context")
        for i in range(8):
            cid = st.add_compression(compressor_model_id=comp, task=TASK, sample_id=f"s{i}", knob_hash="",
                                     text=f"summary <b>{i}</b>", n_tokens=4, run_id="e",
                                     prompt={"messages": [{"role": "user", "content": f"COMPRESS-PROMPT-{i}"}]})
            p1 = st.add_prediction(cell_id="e/c", sample_id=f"s{i}", arm="compressed", text=str(i), compression_id=cid,
                                   prompt={"messages": [{"role": "user", "content": f"PREDICT-PROMPT-{i}"}]})
            p2 = st.add_prediction(cell_id="e/n", sample_id=f"s{i}", arm="no-context", text="x")  # no prompt stored
            st.add_score(prediction_id=p1, metric="em", value=1.0, correct=True)
            st.add_score(prediction_id=p2, metric="em", value=0.0, correct=False)
    md1 = build_report(url, tmp_path / "a", n_boot=10, seed=3).path.read_text()
    md2 = build_report(url, tmp_path / "b", n_boot=10, seed=3).path.read_text()
    ex1, ex2 = md1.split("## Examples", 1)[1], md2.split("## Examples", 1)[1]
    assert ex1.split("## Files")[0] == ex2.split("## Files")[0]
    chosen = pick_samples([f"s{i}" for i in range(8)], 3, seed=3)
    assert re.findall(r"^### `(s\d)`", ex1, re.M) == chosen
    for sid in chosen:
        i = sid[1:]
        assert f"- question: question {i}?" in ex1 and f"COMPRESS-PROMPT-{i}" in ex1 and f"PREDICT-PROMPT-{i}" in ex1
        assert f"| smollm2-135m → qwen2.5-coder-0.5b | summary &lt;b>{i}&lt;/b> (4 tok) | {i} | correct |" in ex1
        assert "| no-context → qwen2.5-coder-0.5b | - | x | wrong |" in ex1
    assert ex1.count("predictor prompt") == 3  # the no-context cell stored none
    html = (tmp_path / "a" / "report.html").read_text()
    assert "<b>" not in html and "<details>" in html  # model text is escaped, the folded prompts are kept


# ----------------------------------------------------------------------------- few clusters


def _clustered(n_clusters: int, per: int, seed: int = 0) -> pd.DataFrame:
    """Outcome with a cluster effect, a cluster-level factor `z` with no effect, and a row-level factor `x`."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_clusters), per)
    u = rng.normal(0, 1.5, n_clusters)[g]
    z = (np.arange(n_clusters) % 2)[g].astype(float)
    x = rng.normal(size=g.size)
    y = (rng.random(g.size) < 1 / (1 + np.exp(-(u + 0.8 * x)))).astype(int)
    return pd.DataFrame({"y": y, "x": x, "z": z, "g": g})


def test_few_clusters_use_small_sample_inference_and_prefer_the_lr_test():
    """With 6 clusters: a warning, Wald p-values from t / F with G − 1 = 5 df (larger than the normal ones), and
    the LR test preferred; with 40 clusters: none of that."""
    import statsmodels.api as sm
    from scipy import stats as sps

    from harness.analyze.stats import FEW_CLUSTERS, few_clusters, logistic_factors, preferred_test

    assert few_clusters(6) and few_clusters(FEW_CLUSTERS - 1) and not few_clusters(FEW_CLUSTERS)
    assert not few_clusters(1) and preferred_test(6, True) == "LR" and preferred_test(40, True) == "Wald"
    d = _clustered(6, 30)
    res = logistic_factors(d, "y", ["x", "z"], "g")
    assert res.ok and res.n_clusters == 6 and res.small_sample and res.preferred == "LR"
    assert any("only 6 clusters (fewer than 20)" in n for n in res.notes)
    plain = sm.Logit(d["y"], sm.add_constant(d[["x", "z"]])).fit(disp=0, cov_type="cluster",
                                                                 cov_kwds={"groups": d["g"]})  # fmt: skip
    for c in res.coefs[1:]:
        se = plain.bse[c.term]
        assert c.p == pytest.approx(2 * sps.t.sf(abs(c.coef / se), 5), rel=1e-6)
        assert c.p > plain.pvalues[c.term]  # the correction only widens
    wald = {w.factor: w for w in res.wald_tests}
    assert wald["z"].kind == "F" and wald["z"].p == pytest.approx(res.coefs[2].p, rel=1e-6)  # F(1, 5) = t(5)²
    assert {t.factor for t in res.lr_tests} == {"x", "z"}
    many = logistic_factors(_clustered(40, 8), "y", ["x", "z"], "g")
    assert not many.small_sample and many.preferred == "Wald" and {w.kind for w in many.wald_tests} == {"chi2"}
    assert not any("clusters (fewer than" in n for n in many.notes)


def test_report_warns_on_few_clusters(tmp_path):
    """The planted store has 10 samples (clusters): the factor section warns and names the LR test first."""
    url = str(tmp_path / "p.db")
    build_store(url)
    sec = build_report(url, tmp_path / "rep", n_boot=10).path.read_text().split("## Factor importance", 1)[1]
    assert "**Few clusters:** only 10 clusters (fewer than 20)" in sec
    assert "| factor | LR chi2 | df | LR p | Wald F(df, 9) p |" in sec
    assert "Read first: the LR test" in sec


def test_compare_names_a_different_mi_scorer_by_model_not_by_label() -> None:
    """Pure logic: "self" on one side and the same model named on the other is one scorer (no note); two
    scorer models are two."""
    import pandas as pd

    from harness.analyze.compare import _scorer_id

    frames = {"mi_estimates": pd.DataFrame({"mi_id": [1, 2, 3], "scorer_model_id": [7, 7, 9]})}
    a = pd.Series({"mi_id": 1, "mi_scorer": "qwen2.5-coder-0.5b"})
    b = pd.Series({"mi_id": 2, "mi_scorer": "self"})
    c = pd.Series({"mi_id": 3, "mi_scorer": "self"})
    assert _scorer_id(frames, a) == _scorer_id(frames, b) == 7
    assert _scorer_id(frames, b) != _scorer_id(frames, c)
