"""`harness view`: the read-only web viewer.

Browser tests drive Debian's chromium (headless, through Playwright) against `harness view` serving a store that a
real tiny sweep (smollm2-135m, synthetic-multidoc) wrote, and check the numbers shown against the store. They skip
when chromium or Playwright is absent, and fail under CI. Screenshots go to each test's tmp dir, and are copied to
$HARNESS_SCREENSHOTS_DIR when set (e.g. to keep them as CI artefacts).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.records import ModelIdentity, Sample
from harness.store import Store
from tests.conftest import REPO, need, need_pack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store written by a real tiny sweep: smollm2-135m compresses (two max_new_tokens knobs, M=2 draws, MI
    self-scored) and predicts synthetic-multidoc (3 samples of one question group), with the no-context and
    full-context arms."""
    need_pack("smollm2-135m")
    from harness.config import load_sweep_config
    from harness.pipeline.sweep import run_sweep

    d = tmp_path_factory.mktemp("view-sweep")
    cfg = {
        "name": "view-test",
        "task": {"name": "synthetic-multidoc", "size": 3, "seed": 0,  # one question group: MI needs ≥ 2 contexts
                 "options": {"n_templates": 1, "context_tokens": 150, "n_distractors": 2}},
        "models": {"compressor": {"model": "gguf/smollm2-135m", "batch_size": 6, "dtype": "float32"},
                   "predictor": {"model": "gguf/smollm2-135m", "batch_size": 6, "dtype": "float32"}},
        "arms": ["compressed", "no-context", "full-context"],
        "generation": {"compressor": {"max_new_tokens": 8}, "predictor": {"max_new_tokens": 6}},
        "overflow": "truncate",
        "mi": {"samples_per_context": 2, "scorers": ["self"], "n_boot": 100},
        "sweep": {"compressors": ["gguf/smollm2-135m"], "predictors": ["gguf/smollm2-135m"],
                  "knobs": {"generation.compressor.max_new_tokens": [4, 8]}},
        "output": {"dir": str(d / "out"), "cache": None, "store": str(d / "view-test.db")},
    }  # fmt: skip
    p = d / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    run_sweep(load_sweep_config(p), quiet=True)
    return d / "view-test.db"


def _planted_store(path: Path) -> dict[str, str]:
    """A store of rows written through the Store API, NOT model output (a fake for the rendering logic only):
    one compressed cell whose compression and prediction have stored prompts, IB / pointwise-MI terms, and an
    agent cell with a three-step trace."""
    with Store.open(path) as st:
        st.start_run(run_id="r1", name="planted", config={}, package_versions={})
        comp = st.model_id(ModelIdentity("planted", "planted-compressor-135m", "x", "float32", "h"))
        pred = st.model_id(ModelIdentity("planted", "planted-predictor-0.5b", "x", "float32", "h"))
        meta = {"doc_sentences": {"d0": ["Paris is in France.", "The sky is green."], "d1": ["Bob likes tea."]},
                "supporting_sentences": [["d0", 0]]}
        st.add_sample("qa", Sample(id="s1", question="Where is Paris?", documents=("a", "b"), answers=("France",),
                                   meta=meta))
        st.add_sample("qa", Sample(id="s2", question="Who likes tea?", documents=("a",), answers=("Bob",)))
        st.upsert_cell(cell_id="cellcomp1", run_id="r1", task="qa", predictor_model_id=pred, arm="compressed",
                       compressor_model_id=comp, knobs={"knob_hash": "k1"})
        st.upsert_cell(cell_id="cellagent", run_id="r1", task="qa", predictor_model_id=pred, arm="deep-research")
        cid = st.add_compression(compressor_model_id=comp, task="qa", sample_id="s1", knob_hash="k1",
                                 text="Paris: France.", n_tokens=4, context_tokens=20, run_id="r1",
                                 prompt=[{"role": "system", "content": "Summarise."},
                                         {"role": "user", "content": "Paris is in France. The sky is green."}])
        st.add_compression_terms(cid, {"pmi": 1.25, "ib_x": 3.5, "ib_y": 0.75}, scorer_model_id=pred, run_id="r1")
        p1 = st.add_prediction(cell_id="cellcomp1", sample_id="s1", arm="compressed", text="France",
                               compression_id=cid, prompt=[{"role": "user", "content": "Context: Paris: France."}])
        st.add_score(prediction_id=p1, metric="exact_match", value=1.0, correct=True, parsed="France")
        c2 = st.add_compression(compressor_model_id=comp, task="qa", sample_id="s2", knob_hash="k1", text="",
                                run_id="r1", error="compressor raised: planted")
        st.add_prediction(cell_id="cellcomp1", sample_id="s2", arm="compressed", text="", compression_id=c2,
                          error="no compression")
        p3 = st.add_prediction(cell_id="cellagent", sample_id="s1", arm="deep-research", text="France")
        st.add_score(prediction_id=p3, metric="exact_match", value=1.0, correct=True, parsed="France")
        for i, kind in enumerate(("plan", "search", "answer")):
            st.add_trace_step(cell_id="cellagent", sample_id="s1", step=i, kind=kind, payload={"text": f"{kind}-x"},
                              model_id=pred, prompt_tokens=10 + i, completion_tokens=3)
    return {"comp": "cellcomp1", "agent": "cellagent"}


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "planted.db"
    return path, _planted_store(path)


def _client(url: str | Path):
    from fastapi.testclient import TestClient

    from harness.view import StoreView, create_app

    return TestClient(create_app(StoreView(url)))


def _text(html: str) -> str:
    """The visible text of an HTML page, tags dropped and whitespace collapsed (for plain-text assertions)."""
    import html as h

    return " ".join(h.unescape(re.sub(r"<[^>]+>", " ", html)).split())


# ----------------------------------------------------------------------------- pure rendering (planted rows)


def test_sample_page_shows_prompts_terms_gold_and_errors(planted):
    """Planted rows (no model): the sample page renders both stored prompts, the IB / pointwise-MI terms, the
    context rebuilt from the sample's meta with the supporting sentence highlighted, and the score."""
    path, ids = planted
    c = _client(path)
    r = c.get("/sample", params={"cell": ids["comp"], "id": "s1"})
    assert r.status_code == 200
    html = r.text
    assert '<mark class="gold">Paris is in France. </mark>' in html  # the supporting sentence, and only it
    assert html.count('<mark class="gold">') == 2  # the gold answer under the question + the one sentence
    t = _text(html)
    assert "system Summarise." in t and "user Paris is in France. The sky is green." in t
    assert "Context: Paris: France." in t
    for name, value in (("pmi", "1.250"), ("ib_x", "3.500"), ("ib_y", "0.750")):
        assert re.search(rf'data-term="{name}"><td>{name}</td><td class="num">{value}</td>', html), name
    assert "not stored" not in t
    r2 = c.get("/sample", params={"cell": ids["comp"], "id": "s2"})
    t2 = _text(r2.text)
    assert "error (compress)" in t2 and "compressor raised: planted" in t2
    cell = _text(c.get("/cell", params={"id": "cellcomp"}).text)  # a unique prefix works
    assert "errors 1 (compress 1, predict 0, score 0)" in cell


def test_grid_shows_every_cell_when_runs_repeat_one(planted):
    """Planted rows (no model): a second run of the same arm, compressor, knobs and predictor gets its own grid row
    (a run column appears) instead of hiding the first run's cell."""
    path, ids = planted
    with Store.open(path) as st:
        st.start_run(run_id="r2", name="again", config={}, package_versions={})
        row = st.rows("cells", cell_id=ids["comp"])[0]
        st.upsert_cell(cell_id="r2comp", run_id="r2", task="qa", predictor_model_id=row["predictor_model_id"],
                       arm="compressed", compressor_model_id=row["compressor_model_id"], knobs={"knob_hash": "k1"})
    html = _client(path).get("/").text
    assert set(re.findall(r'data-cell="([^"]+)"', html)) == {ids["comp"], ids["agent"], "r2comp"}
    assert "<th>run</th>" in html and "3 of 3 cells" in html


def test_trace_steps_are_shown_in_order(planted):
    """Planted trace rows (no model): the agent cell's sample page lists every step with its kind and tokens."""
    path, ids = planted
    html = _client(path).get("/sample", params={"cell": ids["agent"], "id": "s1"}).text
    steps = re.findall(r'data-step="(\d+)"', html)
    assert steps == ["0", "1", "2"]
    t = _text(html)
    assert t.index("plan-x") < t.index("search-x") < t.index("answer-x")
    assert "10+3 tokens" in t and "12+3 tokens" in t
    assert "Compressor prompt" not in t  # an arm without a compressor has no compression steps


def test_unknown_ids_ambiguous_prefix_and_writes_are_refused(planted):
    path, _ = planted
    c = _client(path)
    assert c.get("/cell", params={"id": "nope"}).status_code == 404
    r = c.get("/cell", params={"id": "cell"})  # two cells start with "cell"
    assert r.status_code == 404 and "ambiguous" in r.text
    assert c.get("/sample", params={"cell": "cellcomp1", "id": "zz"}).status_code == 404
    assert c.post("/").status_code == 405 and c.delete("/cell").status_code == 405
    assert c.get("/plots/file/..%2Fplanted.db").status_code == 404
    assert c.get("/static/style.css").status_code == 200


def test_grid_filters_and_read_only_connection(planted):
    """Filters by arm and errors; the connection the viewer opens refuses writes."""
    from harness.view.data import open_read_only

    path, _ = planted
    c = _client(path)
    html = c.get("/", params={"arm": "deep-research"}).text
    assert 'data-cell="cellagent"' in html and 'data-cell="cellcomp1"' not in html
    html = c.get("/", params={"errors": "with"}).text
    assert 'data-cell="cellcomp1"' in html and 'data-cell="cellagent"' not in html
    st = open_read_only(path)
    try:
        with pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only|query_only"):
            st.query("DELETE FROM scores")
    finally:
        st.close()


def test_view_on_postgresql(tmp_path):
    """The viewer reads a PostgreSQL store (planted rows, no model) with a read-only session."""
    url = os.environ.get("HARNESS_TEST_PG_URL")
    need(bool(url), "HARNESS_TEST_PG_URL not set (bash scripts/start-postgres.sh)")
    import psycopg

    schema = f"view_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    surl = f"{url}{sep}options=-csearch_path%3D{schema}"
    try:
        ids = _planted_store(surl)  # type: ignore[arg-type]
        c = _client(surl)
        html = c.get("/").text
        assert f'data-cell="{ids["comp"]}"' in html
        assert "1.250" in c.get("/sample", params={"cell": ids["comp"], "id": "s1"}).text
        from harness.view.data import open_read_only

        st = open_read_only(surl)
        try:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                st.query("DELETE FROM scores")
        finally:
            st.close()
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_compare_lists_the_discordant_samples(tmp_path):
    """Planted verdicts (no model): two cells over five samples, A right on s1, s2, B right on s3 only; the compare
    page shows `compare_cells`' McNemar counts and lists exactly those three samples."""
    from harness.analyze.compare import compare_cells

    path = tmp_path / "cmp.db"
    verdicts = {"A": [1, 1, 0, 1, 0], "B": [0, 0, 1, 1, 0]}
    with Store.open(path) as st:
        st.start_run(run_id="r", config={}, package_versions={})
        m = st.model_id(ModelIdentity("planted", "planted-0.5b", "x", "float32", "h"))
        for arm, vs in verdicts.items():
            st.upsert_cell(cell_id=f"cell{arm}", run_id="r", task="t", predictor_model_id=m, arm=arm)
            for i, v in enumerate(vs, 1):
                st.add_sample("t", Sample(id=f"s{i}", question=f"q{i}", documents=(), answers=(f"g{i}",)))
                pid = st.add_prediction(cell_id=f"cell{arm}", sample_id=f"s{i}", arm=arm, text=f"{arm}-answer-{i}")
                st.add_score(prediction_id=pid, metric="exact_match", value=float(v), correct=bool(v))
    c = compare_cells(path, "cellA", "cellB")
    assert (c.a_only, c.b_only) == (2, 1)
    html = _client(path).get("/compare", params={"a": "cellA", "b": "cellB"}).text
    assert re.findall(r'<tr data-sample="(s\d)">', html) == ["s1", "s2", "s3"]
    assert '<b data-field="a_only">2</b>' in html and '<b data-field="b_only">1</b>' in html
    assert f'data-field="diff">{c.diff.diff:+.3f} [{c.diff.lo:+.3f}, {c.diff.hi:+.3f}]' in html
    assert "A-answer-3" in html and "B-answer-3" in html and "A-answer-4" not in html


# ----------------------------------------------------------------------------- the CLI


def test_view_bad_store_is_one_line_exit_2(tmp_path):
    for store in (str(tmp_path / "missing.db"), "mysql://x/y"):
        r = subprocess.run([sys.executable, "-m", "harness.cli", "view", store, "--no-browser", "--port", "0"],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    not_a_store = tmp_path / "x.db"
    sqlite3.connect(not_a_store).close()
    r = subprocess.run([sys.executable, "-m", "harness.cli", "view", str(not_a_store), "--no-browser"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "not a results store" in r.stderr


def test_view_port_in_use_is_one_line_exit_2(planted):
    path, _ = planted
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "harness.cli", "view", str(path), "--no-browser", "--port",
                            str(port)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and f"127.0.0.1:{port}" in r.stderr


# ----------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def server(sweep_store: Path) -> Iterator[str]:
    """`harness view STORE --port 0 --no-browser` in a subprocess; yields its URL (printed on stdout)."""
    log = sweep_store.parent / "view.log"
    with log.open("w") as err:
        p = subprocess.Popen([sys.executable, "-m", "harness.cli", "view", str(sweep_store), "--port", "0",
                              "--no-browser"], stdout=subprocess.PIPE, stderr=err, text=True,
                             cwd=sweep_store.parent)  # no results/report-* folder there: plots rendered on request
    try:
        line = p.stdout.readline() if p.stdout else ""
        m = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert m, (line, log.read_text()[-3000:])
        url = m.group(0)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline and p.poll() is None, "viewer did not start"
                time.sleep(0.2)
        yield url
    finally:
        p.terminate()
        p.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    need(Path(CHROMIUM).exists(), f"{CHROMIUM} not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "playwright not installed (pip install playwright)")
        raise
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, tmp_path):
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield pg
    ctx.close()
    assert not errors, errors  # no script errors, no failed loads (nothing is fetched from outside)


def _shot(pg, tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"{name}.png"
    pg.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 10_000
    if os.environ.get("HARNESS_SCREENSHOTS_DIR"):
        keep = Path(os.environ["HARNESS_SCREENSHOTS_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, keep / f"view-{name}.png")
    return out


def _store_numbers(store: Path) -> dict[str, dict[str, object]]:
    """Per cell, straight from the store's rows: correct/n of the scored predictions, and the MI row's bits."""
    with sqlite3.connect(store) as db:
        rows = db.execute(
            "SELECT p.cell_id, SUM(s.correct), COUNT(s.correct) FROM predictions p JOIN scores s "
            "ON s.prediction_id = p.prediction_id WHERE p.error IS NULL GROUP BY p.cell_id").fetchall()
        out: dict[str, dict[str, object]] = {c: {"correct": int(k), "n": int(n)} for c, k, n in rows}
        mi = db.execute("SELECT c.cell_id, m.bits FROM cells c JOIN mi_estimates m ON m.compressor_model_id = "
                        "c.compressor_model_id AND m.group_id = '' AND m.error IS NULL AND m.knob_hash = "
                        "json_extract(c.knobs_json, '$.knob_hash')").fetchall()
    for cid, bits in mi:
        out.setdefault(cid, {})["mi_bits"] = bits
    return out


def test_browser_grid_cell_sample_and_compare(server, page, sweep_store, tmp_path):
    """Load the grid, check every cell's accuracy and MI against the store, open a cell and a sample (texts
    equal the stored ones, gold evidence highlighted), then compare two cells (McNemar counts equal the listed
    discordant samples and `harness compare`'s numbers)."""
    from harness.analyze.compare import compare_cells
    from harness.analyze.frames import load_cells

    before = hashlib.sha256(sweep_store.read_bytes()).hexdigest()
    want = _store_numbers(sweep_store)
    cells = load_cells(sweep_store).set_index("cell_id")
    pg = page
    pg.goto(server)
    boxes = pg.locator("td.cellbox")
    assert boxes.count() == len(cells) == 4  # 2 knobs × compressed, no-context, full-context
    for i in range(boxes.count()):
        box = boxes.nth(i)
        cid = box.get_attribute("data-cell")
        acc = box.locator('[data-field="accuracy"]')
        n_text = box.locator('[data-field="correct_n"]').inner_text()
        assert n_text == f"{want[cid]['correct']}/{want[cid]['n']}"
        assert float(acc.get_attribute("data-value")) == pytest.approx(want[cid]["correct"] / want[cid]["n"])
        assert acc.inner_text().startswith(f"{want[cid]['correct'] / want[cid]['n']:.3f} [")
        assert acc.inner_text() == f"{cells.loc[cid, 'accuracy']:.3f} [{cells.loc[cid, 'acc_lo']:.2f}, " \
                                   f"{cells.loc[cid, 'acc_hi']:.2f}]"
        mi = box.locator('[data-field="mi_bits"]')
        if want[cid].get("mi_bits") is not None and cells.loc[cid, "arm"] == "compressed":
            assert float(mi.get_attribute("data-value")) == pytest.approx(want[cid]["mi_bits"])
            assert mi.inner_text().startswith(f"{want[cid]['mi_bits']:.2f}")
        else:
            assert mi.inner_text() == "-"
    assert all(want[c].get("mi_bits") is not None for c in cells.index if cells.loc[c, "arm"] == "compressed")
    assert pg.locator("section.task h2").inner_text() == "task synthetic-multidoc"
    _shot(pg, tmp_path, "grid")

    # a compressed cell: one row per sample, the status of each as the store's score says
    cid = next(c for c in cells.index if cells.loc[c, "arm"] == "compressed")
    pg.locator(f'td.cellbox[data-cell="{cid}"] a.cell-link').click()
    pg.wait_for_selector("#samples")
    with sqlite3.connect(sweep_store) as db:
        preds = db.execute("SELECT p.sample_id, p.text, s.correct, p.compression_id FROM predictions p LEFT JOIN "
                           "scores s ON s.prediction_id = p.prediction_id WHERE p.cell_id = ? ORDER BY p.sample_id",
                           (cid,)).fetchall()
    rows = pg.locator("#samples tbody tr")
    assert rows.count() == len(preds) == 3
    for sid, _, correct, _ in preds:
        label = pg.locator(f'#samples tr[data-sample="{sid}"]').get_attribute("data-label")
        assert label in (("correct",) if correct else ("incorrect", "unparseable")), (sid, label)
    _shot(pg, tmp_path, "cell")

    # search filters the rows as one types
    pg.fill("#search", preds[0][0])
    assert pg.locator("#samples tbody tr:not([hidden])").count() == 1
    pg.fill("#search", "")

    # a sample: the stored answer and compression, the context with its supporting sentences highlighted
    sid, text, _, comp_id = preds[0]
    pg.locator(f'#samples tr[data-sample="{sid}"] a').click()
    pg.wait_for_selector("#step-answer")
    assert pg.locator("#step-answer pre.answer").inner_text() == text
    with sqlite3.connect(sweep_store) as db:
        ctext, cprompt = db.execute("SELECT text, prompt_json FROM compressions WHERE compression_id = ?",
                                    (comp_id,)).fetchone()
        meta = json.loads(db.execute("SELECT meta_json FROM samples WHERE sample_id = ?", (sid,)).fetchone()[0])
    assert pg.locator("#step-compression pre.compression").inner_text() == ctext
    gold = pg.locator("#step-context .doc mark.gold")
    assert gold.count() == len(meta["supporting_sentences"]) >= 1
    support = {meta["doc_sentences"][d][i].strip() for d, i in meta["supporting_sentences"]}
    assert {t.strip() for t in gold.all_inner_texts()} == support
    cp = pg.locator("#step-compressor-prompt").inner_text()
    assert ("not stored" in cp) == (cprompt is None)
    _shot(pg, tmp_path, "sample")

    # compare the two compressed cells (two knobs): the form on the grid
    pg.goto(server)
    ids = [boxes.nth(i).get_attribute("data-cell") for i in range(boxes.count())]
    a, b = [c for c in ids if cells.loc[c, "arm"] == "compressed"][:2]
    pg.select_option("#compare-form select[name=a]", a)
    pg.select_option("#compare-form select[name=b]", b)
    pg.click("#compare-form button")
    pg.wait_for_selector("#cmp-table")
    c = compare_cells(sweep_store, a, b)
    assert pg.locator('[data-field="acc_a"]').inner_text() == f"{c.acc_a:.3f}"
    assert pg.locator('[data-field="acc_b"]').inner_text() == f"{c.acc_b:.3f}"
    assert pg.locator('[data-field="a_only"]').inner_text() == str(c.a_only)
    assert pg.locator('[data-field="b_only"]').inner_text() == str(c.b_only)
    assert pg.locator("#discordant tbody tr").count() == c.a_only + c.b_only
    assert f"pairs: {c.n_pairs} matched on" in pg.locator("#pairs").inner_text()
    _shot(pg, tmp_path, "compare")

    # nothing was written to the store
    assert hashlib.sha256(sweep_store.read_bytes()).hexdigest() == before


def test_browser_filters_and_plots(server, page, sweep_store, tmp_path):
    """The grid's filters apply on change (script), and the plots page renders the report's plots on request."""
    pg = page
    pg.goto(server)
    total = pg.locator("td.cellbox").count()
    pg.select_option("#filters select[name=arm]", "no-context")
    pg.wait_for_url(re.compile(r"arm=no-context"))
    assert 0 < pg.locator("td.cellbox").count() < total
    assert "of 4 cells" in pg.locator("#shown").inner_text()
    from harness.analyze.report import build_report

    rep = build_report(sweep_store, tmp_path / "report")  # what the viewer should show
    want = sorted(p.name for p in rep.folder.iterdir() if p.suffix in (".png", ".svg"))
    want = [n for n in want if n.endswith(".png") or n[:-4] + ".png" not in want]
    pg.goto(server + "plots")
    assert pg.locator("#render").count() == 1  # the store has no report folder: render on request
    pg.click("#render")
    pg.wait_for_selector("figure.plot img, #no-plots", timeout=120_000)
    assert [c.strip() for c in pg.locator("figure.plot figcaption").all_inner_texts()] == want
    imgs = pg.locator("figure.plot img")
    assert all(imgs.nth(i).evaluate("i => i.complete && i.naturalWidth > 100") for i in range(imgs.count()))
    _shot(pg, tmp_path, "plots")
