"""The CLI's store tools: `harness cells` (short ids, id prefixes), `compare --show`, `export`, `rescore`,
`--version`, the examples in every `--help`, rich tables, per-item progress and quiet library output.

One real run (smollm2-135m, float32, both roles, 3 synthetic-records samples, compressed and no-context arms) as a
subprocess makes the store of the module-scoped fixture; its stderr is checked for transformers' noise. The
discordant-sample and flip-count tests use the planted store of tests/test_report.py (built row by row with the
Store API: pure logic, known answers); the progress-bar tests are pure logic with a fake bar-less stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.analyze.cells import cell_hash, resolve_cell, short_ids
from harness.analyze.rescore import contains, sample_from_row
from harness.cli import EXAMPLES, build_parser, main
from harness.errors import UserError
from harness.store import TABLES, VIEW_NAME, Store
from tests.conftest import REPO, need_pack
from tests.test_report import build_store, cell_id

SAMPLES = 3


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real `harness run` in a subprocess (not a TTY, no -q): its store, stdout and stderr."""
    need_pack("smollm2-135m")
    tmp = tmp_path_factory.mktemp("cli_tools")
    model = {"model": "gguf/smollm2-135m", "dtype": "float32", "batch_size": 4}
    cfg = {
        "name": "tools",
        "task": {"name": "synthetic-records", "size": SAMPLES, "seed": 0, "options": {"context_tokens": 120}},
        "models": {"compressor": dict(model), "predictor": dict(model)},
        "arms": ["compressed", "no-context"],
        "generation": {"compressor": {"max_new_tokens": 12}, "predictor": {"max_new_tokens": 4}},
        "output": {"dir": str(tmp / "runs" / "{name}"), "cache": str(tmp / "cache.sqlite"),
                   "store": str(tmp / "store.db")},
    }
    path = tmp / "tools.yaml"
    path.write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS",
                                                          "HARNESS_PROGRESS")}
    env["HF_HUB_OFFLINE"] = "1"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path)], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    return {"store": str(tmp / "store.db"), "tmp": tmp, "stdout": p.stdout, "stderr": p.stderr, "config": path,
            "env": env}


def _cells(store: str) -> list[str]:
    with Store.open(store, create=False) as st:
        return [r["cell_id"] for r in st.rows("cells")]


# ----------------------------------------------------------------------------- --version, --help, quiet output


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from harness import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip().startswith(f"harness {__version__} (python ")


def test_every_subcommand_help_has_an_example() -> None:
    """Every subcommand (nested ones too) ends its --help with an example that starts with `harness <its path>`."""
    seen = []

    def walk(p: Any, path: str) -> None:
        for action in p._actions:
            if not isinstance(action, argparse._SubParsersAction):
                continue
            for name, sp in action.choices.items():
                key = f"{path} {name}".strip()
                seen.append(key)
                text = sp.format_help()
                assert "example:\n  harness " in text, key
                assert EXAMPLES[key].startswith(f"harness {key.split()[0]}"), key
                walk(sp, key)

    walk(build_parser(), "")
    assert {"run", "sweep", "cells", "compare", "export", "rescore", "models fetch", "configs show"} <= set(seen)


def test_a_run_keeps_transformers_noise_out_of_its_output(real: dict[str, Any]) -> None:
    """No weight-loading bars, deprecation notices or transformers warnings in a default (not --verbose) run; no
    progress bars either (stderr is not a terminal)."""
    err = real["stderr"]
    assert "Loading weights" not in err
    for bad in ("Deprecat", "deprecat", "FutureWarning", "[transformers]", "it/s]", "req/s]"):
        assert bad not in err, (bad, err[-1500:])
    out = real["stdout"]
    assert out.startswith("# tools: task synthetic-records, 3 samples")
    # the cell table is drawn with rich (one row a line when piped), not as markdown
    rows = [" ".join(line.split()) for line in out.splitlines()]
    assert not any(line.startswith("|") for line in out.splitlines())
    assert any(r.startswith("compressed gguf/smollm2-135m gguf/smollm2-135m 3 ") for r in rows)
    assert any(r.startswith("no-context - gguf/smollm2-135m 3 ") for r in rows)


def test_verbose_keeps_the_libraries_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pure logic: --verbose changes nothing; the default silences transformers' logger and its loading bars."""
    import warnings

    from transformers.utils import logging as tf_logging

    from harness.cli import quiet_libraries

    for k in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "TOKENIZERS_PARALLELISM"):
        monkeypatch.setenv(k, "x")  # records the value to restore after the test
        monkeypatch.delenv(k)
    level, bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
    try:
        with warnings.catch_warnings():
            tf_logging.set_verbosity_warning()
            tf_logging.enable_progress_bar()
            quiet_libraries(verbose=True)
            assert "TRANSFORMERS_VERBOSITY" not in os.environ and tf_logging.is_progress_bar_enabled()
            quiet_libraries(verbose=False)
            assert os.environ["TRANSFORMERS_VERBOSITY"] == "error" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
            assert tf_logging.get_verbosity() == tf_logging.ERROR and not tf_logging.is_progress_bar_enabled()
            with warnings.catch_warnings(record=True) as got:
                warnings.warn("old API", FutureWarning, stacklevel=1)
            assert got == []
    finally:
        tf_logging.set_verbosity(level)
        (tf_logging.enable_progress_bar if bars else tf_logging.disable_progress_bar)()


def test_a_cached_rerun_numbers_its_stages(real: dict[str, Any]) -> None:
    """The rerun (answered from the response cache) with bars forced on: "stage k/n" with n = compress + one
    predict stage per arm, each bar reaching its total, and the run's ETA."""
    from harness.cli import planned_run_stages
    from harness.config import load_config

    assert planned_run_stages(load_config(real["config"], {})) == 3
    # rerun on a copy of the store, so the module's store keeps one run for the tests below (any order)
    rerun = real["tmp"] / "rerun"
    rerun.mkdir(exist_ok=True)
    shutil.copy(real["store"], rerun / "store.db")
    cfg = json.loads(Path(real["config"]).read_text())
    cfg["output"] = {**cfg["output"], "store": str(rerun / "store.db"), "dir": str(rerun / "runs" / "{name}")}
    cfg_path = rerun / "tools.yaml"
    cfg_path.write_text(json.dumps(cfg))
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(cfg_path)], capture_output=True,
                       text=True, env={**real["env"], "HARNESS_PROGRESS": "1"}, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    err = p.stderr.replace("\r", "\n")
    assert "stage 1/3 compress" in err and "stage 2/3 predict" in err and "stage 3/3 predict" in err
    assert "stage 4/" not in err and f"{SAMPLES}/{SAMPLES} [" in err and "run ETA" in err
    assert "model loads 0" in p.stdout


# ----------------------------------------------------------------------------- cells and id prefixes


def test_short_ids_are_unique_prefixes_of_the_hash() -> None:
    """Pure logic. Two ids whose hashes share 6 digits get longer short ids; every short id resolves."""
    by6: dict[str, str] = {}
    pair = None
    for i in range(200_000):
        c = f"cell{i}"
        h = cell_hash(c)[:6]
        if h in by6:
            pair = [by6[h], c]
            break
        by6[h] = c
    assert pair is not None
    ids = [*pair, "run/compressed", "run/no-context"]
    short = short_ids(ids)
    assert len(set(short.values())) == 4 and all(len(s) >= 7 for s in short.values())
    for c, s in short.items():
        assert cell_hash(c).startswith(s) and resolve_cell(s, ids) == c
    assert resolve_cell("run/comp", ids) == "run/compressed"
    with pytest.raises(UserError, match=r"ambiguous cell 'run/': 2 cells match: .*run/compressed.*run/no-context"):
        resolve_cell("run/", ids)
    with pytest.raises(UserError, match=r"ambiguous cell '"):
        resolve_cell(cell_hash(pair[0])[:6], ids)
    with pytest.raises(UserError, match=r"unknown cell 'zzz'"):
        resolve_cell("zzz", ids)


def test_cells_table_and_prefixes_in_compare(real: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = real["store"]
    ids = _cells(store)
    assert len(ids) == 2
    short = short_ids(ids)
    assert main(["cells", store]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for c in ids:
        row = next(line for line in lines if line.startswith(short[c]))
        assert c.rsplit("/", 1)[1] in row and "smollm2-135m" in row and c in row
    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal: the table folds to fit, short ids stay whole
    assert main(["cells", store]) == 0
    narrow = capsys.readouterr().out.splitlines()
    assert narrow[-1].startswith(f"{len(ids)} cells;")
    assert max(len(line) for line in narrow[:-1]) <= 80  # the table (the footer line is plain text)
    assert all(any(line.startswith(short[c] + " ") for line in narrow) for c in ids)
    monkeypatch.delenv("COLUMNS")
    assert main(["cells", store, "--ids"]) == 0
    assert capsys.readouterr().out.split() == sorted(ids, key=lambda c: (c.rsplit("/", 1)[1], c))
    comp = next(c for c in ids if c.endswith("/compressed"))
    other = next(c for c in ids if c != comp)
    # a short id and a unique prefix of a full id both name a cell
    assert main(["compare", store, short[comp], other[: len(other) - 3]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"A: {comp}  (compressed,") and f"B: {other}  (no-context," in out
    # the run id is a prefix of both: ambiguous, one line naming both, exit 2
    run_id = comp.rsplit("/", 1)[0]
    assert main(["compare", store, run_id, comp]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: ambiguous cell '{run_id}': 2 cells match:")
    assert short[comp] in err and short[other] in err
    assert main(["compare", store, "nope", comp]) == 2
    assert capsys.readouterr().err.startswith("error: unknown cell 'nope'")


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_round_trip_row_counts(real: dict[str, Any], fmt: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    store = real["store"]
    out = tmp_path / "exp"
    assert main(["export", store, "--format", fmt, "--out", str(out)]) == 0
    assert f"as {fmt} to {out}" in capsys.readouterr().out
    with Store.open(store, create=False) as st:
        want = {t: st.count(t) for t in TABLES}
        want[VIEW_NAME] = len(st.query(f"SELECT * FROM {VIEW_NAME}")[1])
    assert want["predictions"] == 2 * SAMPLES and want["compressions"] == SAMPLES
    got = {}
    for t in want:
        f = out / f"{t}.{fmt}"
        df = pd.read_parquet(f) if fmt == "parquet" else pd.read_csv(f)
        got[t] = len(df)
    assert got == want
    preds = pd.read_parquet(out / "predictions.parquet") if fmt == "parquet" else pd.read_csv(out / "predictions.csv")
    with Store.open(store, create=False) as st:
        texts = {r["prediction_id"]: r["text"] for r in st.rows("predictions")}
    assert {int(k): ("" if pd.isna(v) else str(v)) for k, v in zip(preds["prediction_id"], preds["text"],
                                                                   strict=True)} == texts


# ----------------------------------------------------------------------------- rescore


def _score_rows(store: str) -> list[dict[str, Any]]:
    with Store.open(store, create=False) as st:
        return [{k: v for k, v in r.items() if k != "created_at"} for r in st.rows("scores")]


def test_rescore_real_store_adds_rows_and_never_overwrites(real: dict[str, Any], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store.db")
    shutil.copy(real["store"], store)
    before = _score_rows(store)
    assert len(before) == 2 * SAMPLES
    # the run's own metric again: nothing new, nothing flips
    assert main(["rescore", store]) == 0
    out = capsys.readouterr().out
    assert f"added 0 score rows; {2 * SAMPLES} unchanged; flips against the counted verdicts: 0 wrong→right, " \
           "0 right→wrong" in out
    assert _score_rows(store) == before
    # a new metric: one new row per prediction, each its own verdict; the old rows stay as they were
    with Store.open(store, create=False) as st:
        samples = {r["sample_id"]: sample_from_row(r) for r in st.rows("samples")}
        preds = st.rows("predictions")
    assert main(["rescore", store, "--metric", "contains", "--dry-run"]) == 0
    assert f"would add {2 * SAMPLES} score rows" in capsys.readouterr().out
    assert _score_rows(store) == before
    assert main(["rescore", store, "--metric", "contains"]) == 0
    out = capsys.readouterr().out
    after = _score_rows(store)
    assert after[: len(before)] == before
    new = {r["prediction_id"]: r for r in after[len(before):]}
    assert len(new) == 2 * SAMPLES and {r["metric"] for r in new.values()} == {"contains"}
    old = {r["prediction_id"]: bool(r["correct"]) for r in before}
    flips = [0, 0]
    for p in preds:
        want = contains(samples[p["sample_id"]], p["text"]).correct
        assert bool(new[p["prediction_id"]]["correct"]) == want
        flips[0] += int(want and not old[p["prediction_id"]])
        flips[1] += int(old[p["prediction_id"]] and not want)
    assert f"flips against the counted verdicts: {flips[0]} wrong→right, {flips[1]} right→wrong" in out
    # the report counts the metric it is told to (default: the first stored by name, here contains)
    pred_cell = {p["prediction_id"]: p["cell_id"] for p in preds}
    for metric, rows in (("exact_match", before), ("contains", list(new.values()))):
        assert main(["report", store, "--metric", metric, "--out", str(tmp_path / metric)]) == 0
        got = pd.read_csv(tmp_path / metric / "cells.csv").set_index("cell_id")["accuracy"]
        v = pd.Series({r["prediction_id"]: float(bool(r["correct"])) for r in rows})
        want = v.groupby(v.index.map(pred_cell)).mean()
        assert len(want) == 2 and all(got[c] == pytest.approx(a) for c, a in want.items()), (metric, got, want)
    capsys.readouterr()
    # the same again: all unchanged; a different metric under a stored name: kept, counted as differing
    assert main(["rescore", store, "--metric", "contains"]) == 0
    assert f"added 0 score rows; {2 * SAMPLES} unchanged" in capsys.readouterr().out
    assert main(["rescore", store, "--metric", "exact_match", "--as", "contains", "--cell",
                 short_ids(_cells(store))[next(c for c in _cells(store) if c.endswith("/no-context"))]]) == 0
    out = capsys.readouterr().out
    assert _score_rows(store) == after  # nothing overwritten
    assert "added 0 score rows" in out and "stored scores under the same name differ" in out
    assert "differ from the rescore and were kept (never overwritten)" in out


def test_rescore_flip_counts_on_planted_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Store API (planted): every answer is the text "a" while the gold is the sample's number, so the numeric
    metric finds every planted right answer wrong: right→wrong = the planted right answers, per cell."""
    url = str(tmp_path / "planted.db")
    build_store(url)
    from tests.test_report import PLAN

    assert main(["rescore", url, "--as", "numeric_v2"]) == 0
    out = capsys.readouterr().out
    right = sum(sum(1 for v in plan if v == 1) for plan in PLAN.values())
    answered = sum(sum(1 for v in plan if v is not None) for plan in PLAN.values())
    assert f"added {answered} score rows" in out
    assert f"flips against the counted verdicts: 0 wrong→right, {right} right→wrong" in out
    assert main(["cells", url, "--metric", "numeric_v2"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    accs = [r[r.index("[0.00,") - 1] for r in rows if "[0.00," in r]
    assert accs and set(accs) == {"0.000"}
    assert main(["compare", url, cell_id("c3", "p1"), cell_id("c1", "p1"), "--metric", "numeric_v2"]) == 0
    assert "A right/B wrong 0, A wrong/B right 0" in capsys.readouterr().out


# ----------------------------------------------------------------------------- compare --show


def test_compare_show_prints_discordant_samples_reproducibly(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Store API (planted): c3/p1 is right and c1/p1 wrong on s3..s7, never the reverse (5 discordant pairs)."""
    url = str(tmp_path / "planted.db")
    build_store(url)
    a, b = cell_id("c3", "p1"), cell_id("c1", "p1")
    assert main(["compare", url, a, b, "--show", "3"]) == 0
    out = capsys.readouterr().out
    assert "discordant samples: 3 of 5 (A right/B wrong 5, A wrong/B right 0; drawn with seed 0)" in out
    shown = [line.split()[1] for line in out.splitlines() if line.startswith("sample ")]
    assert len(shown) == 3 and set(shown) <= {f"s{i}" for i in range(3, 8)} and shown == sorted(shown)
    assert out.count("(A right)") == 3 and out.count("  question: q?") == 3
    for s in shown:
        assert f"  gold:     {s[1:]}" in out
    assert out.count("  A right:  'a'") == 3 and out.count("  B wrong:  'a'") == 3
    assert main(["compare", url, a, b, "--show", "3"]) == 0
    assert capsys.readouterr().out == out  # the same draw again
    assert main(["compare", url, a, b, "--show", "10"]) == 0
    out = capsys.readouterr().out
    assert "discordant samples: 5 of 5" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("sample ")] == [f"s{i}" for i in
                                                                                           range(3, 8)]
    assert main(["compare", url, cell_id("-", "p2"), cell_id("-", "p2")[:-1] + "1", "--show", "2"]) == 0
    assert "A right/B wrong 1, A wrong/B right 0" in capsys.readouterr().out


# ----------------------------------------------------------------------------- progress


def test_progress_bar_moves_per_item_with_stage_and_run_eta(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Pure logic (no model): a backend's per-item ticks move the bar inside a chunk; the chunk's update counts
    only the rest; bars are numbered "stage k/n"; they are off when quiet or when stderr is not a terminal."""
    from harness.pipeline.stages import progress_bar
    from harness.progress import bars_enabled, item_done, run_progress

    monkeypatch.setenv("HARNESS_PROGRESS", "1")
    with run_progress(2) as rp:
        with progress_bar(8, "compress", quiet=False) as bar:
            assert bar.desc.startswith("stage 1/2 compress")
            item_done()  # row 1 of a batch of 4 ended early
            assert bar.n == 1
            item_done(2)
            assert bar.n == 3
            bar.update(4)  # the batch of 4 is done: only 1 more
            assert bar.n == 4
            bar.update(4)  # a batch without ticks (e.g. from the cache)
            assert bar.n == 8
            item_done(5)  # never past the total
            assert bar.n == 8
        with progress_bar(2, "predict", quiet=False) as bar2:
            assert bar2.desc.startswith("stage 2/2 predict")
            item_done()
            assert bar2.n == 1
            assert "run ETA" in str(bar2.postfix)
        assert len(rp.stage_seconds) == 2
    item_done()  # no bar open: nothing happens
    err = capsys.readouterr().err
    assert "stage 1/2 compress" in err and "8/8" in err
    monkeypatch.delenv("HARNESS_PROGRESS")
    assert not bars_enabled(False) or sys.stderr.isatty()
    assert not bars_enabled(True)


def test_transformers_generate_moves_the_bar_within_a_batch(smollm2: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real batch of 3 on smollm2: the open bar moves token by token (1/max_new_tokens of a request per row and
    step, the rest of a request when its row ends) and reaches 3 before the chunk's own update, which adds nothing."""
    from harness.pipeline.stages import progress_bar
    from harness.records import GenParams, GenRequest

    monkeypatch.setenv("HARNESS_PROGRESS", "1")
    ticks: list[float] = []
    reqs = [GenRequest.chat([{"role": "user", "content": q}], GenParams(max_new_tokens=10, temperature=0.0, seed=0))
            for q in ("Say yes.", "Say no.", "Count to three.")]
    with progress_bar(3, "predict", quiet=False) as bar:
        orig = bar.tick
        monkeypatch.setattr(bar, "tick", lambda n=1: (ticks.append(n), orig(n)))
        smollm2.generate(reqs)
        assert bar.n == pytest.approx(3) and sum(ticks) == pytest.approx(3)
        assert len(ticks) >= 5 and ticks[0] == pytest.approx(3 / 10)  # moved per token, 3 rows × 1/10 at step 1
        assert bar.format_dict["n"] == 3
        bar.update(3)
        assert bar.n == pytest.approx(3)


def test_transformers_generate_skips_the_bar_criterion_when_no_bar_is_drawn(smollm2: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A real smollm2 batch under a bar that is off (quiet): no per-token criterion is attached, so the bar is
    never ticked, and the generations are the same as under a drawn bar."""
    from harness.pipeline.stages import progress_bar
    from harness.records import GenParams, GenRequest

    reqs = [GenRequest.chat([{"role": "user", "content": q}], GenParams(max_new_tokens=6, temperature=0.0, seed=0))
            for q in ("Say yes.", "Count to three.")]
    ticks: list[float] = []
    with progress_bar(2, "predict", quiet=True) as bar:
        monkeypatch.setattr(bar, "tick", lambda n=1: ticks.append(n))
        quiet = smollm2.generate(reqs)
    assert ticks == []
    monkeypatch.setenv("HARNESS_PROGRESS", "1")
    with progress_bar(2, "predict", quiet=False):
        drawn = smollm2.generate(reqs)
    assert [g.token_ids for g in quiet] == [g.token_ids for g in drawn]


def test_lenient_metric_is_contains_for_text_and_the_tasks_own_for_numbers() -> None:
    """Pure: `lenient` counts "In 1987." for gold "1987" on a text sample (exact match does not), and matches a
    number sample numerically (1200.4 is within 1% of 1200, and contains would miss it)."""
    from harness.analyze.rescore import METRICS, lenient
    from harness.records import Sample

    text = Sample(id="t", question="q", documents=(), answers=("1987",), answer_type="text")
    num = Sample(id="n", question="q", documents=(), answers=("1200",), answer_type="number")
    assert lenient(text, "In 1987.").correct and not METRICS["exact_match"][0](text, "In 1987.").correct
    assert lenient(num, "It was 1200.4").correct and not METRICS["contains"][0](num, "It was 1200.4").correct
    assert not lenient(num, "It was 1300").correct
    assert "lenient" in METRICS
