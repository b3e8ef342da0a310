"""The compressor protocol and `python/<module>:<function>` compressors.

Pure-logic tests (no model): spec resolution and its one-line errors, a failing or misbehaving user function, and
the deterministic-compressor MI (exact plug-in entropy; any scorer's estimate is a lower bound on it). End to end
with real models (the smollm2 pack): a rule-based `python/` filter through `harness run` and `harness sweep`,
including proxy MI scored by smollm2.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.compressors import CompressInput, Compressor, LMCompressor, PythonCompressor
from harness.compressors.examples import keep_relevant_sentences
from harness.config import parse_config
from harness.errors import UserError
from harness.mi import deterministic_mi_bits, estimate_mi
from harness.records import Document, GenParams, Sample
from tests.conftest import need_pack

TASK = {"name": "synthetic-records", "size": 4, "seed": 3, "options": {"n_templates": 1, "context_tokens": 200}}
EXAMPLE = "python/harness.compressors.examples:keep_relevant_sentences"


def _sample(context: str = "Alpha is red. Beta is blue.", question: str = "What colour is Beta?") -> Sample:
    return Sample(id="s0", question=question, documents=(Document(id="d0", text=context),), answers=("blue",))


def _module(tmp_path: Path, body: str) -> str:
    """Write a user module into tmp_path under a fresh name (no stale sys.modules entry) and return its name."""
    name = f"user_comp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body)
    return name


# ---------------------------------------------------------------------------- pure logic (no model)


def test_python_compressor_function_and_class(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a user's module in the current folder imports, as with `python -m`
    mod = _module(tmp_path, "def first(question, context, n=1):\n    return context.split('. ')[n - 1]\n\n"
                            "class Upper:\n    def __init__(self, suffix=''):\n        self.suffix = suffix\n"
                            "    def compress(self, question, context):\n"
                            "        return context.upper() + self.suffix\n")
    fn = PythonCompressor(f"python/{mod}:first", {"n": 2})
    assert isinstance(fn, Compressor) and fn.deterministic and fn.scorer is None
    s = _sample()
    inp, err = fn.prepare(s, "error")
    assert err is None and inp == CompressInput(s, s.context)
    g = fn.compress([(inp, GenParams(seed=1)), (inp, GenParams(seed=2, temperature=1.0))])
    assert [x.text for x in g] == ["Beta is blue.", "Beta is blue."] and all(x.error is None for x in g)
    assert g[0].token_ids == [] and g[0].logprobs is None and g[0].finish_reason == "stop"
    cls = PythonCompressor(f"python/{mod}:Upper", {"suffix": "!"})
    assert cls.compress([(inp, GenParams())])[0].text == "ALPHA IS RED. BETA IS BLUE.!"
    # the identity holds the options (and the module's source): other options are another compressor
    assert fn.identity() != PythonCompressor(f"python/{mod}:first", {"n": 1}).identity()
    assert fn.identity().backend == "python" and fn.identity().name == f"{mod}:first"


def test_python_compressor_failures_are_error_rows_not_crashes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mod = _module(tmp_path, "def boom(question, context):\n    raise ValueError('no sentences here')\n\n"
                            "def number(question, context):\n    return 42\n")
    inp = CompressInput(_sample(), "ctx")
    (g,) = PythonCompressor(f"python/{mod}:boom").compress([(inp, GenParams())])
    assert g.error == f"python/{mod}:boom raised ValueError: no sentences here" and g.text == ""
    (g,) = PythonCompressor(f"python/{mod}:number").compress([(inp, GenParams())])
    assert g.error == f"python/{mod}:number returned int, not str"


@pytest.mark.parametrize(("spec", "options", "needles"), [
    ("python/no_such_module_xyz:f", {}, ["models.compressor.model", "no Python module 'no_such_module_xyz'"]),
    ("python/harness.compressors.examples:nope", {}, ["models.compressor.model", "has no 'nope'"]),
    (EXAMPLE, {"max_sentence": 2}, ["models.compressor.options", "does not fit its signature",
                                    "unexpected keyword argument 'max_sentence'"]),
])
def test_bad_python_spec_is_one_line_exit_2(tmp_path, spec, options, needles):
    """`harness run` with a bad python/ spec: one stderr line naming the field, exit 2, nothing written."""
    cfg = {"name": "t", "task": TASK, "models": {"compressor": {"model": spec, "options": options},
                                                 "predictor": {"model": "gguf/smollm2-135m"}}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(p), "-q"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert not (tmp_path / "results").exists()  # checked before any file is created


def test_python_spec_config_rules():
    base = {"task": TASK, "models": {"predictor": {"model": "gguf/smollm2-135m"}}}

    def parse(**models):
        return parse_config({**base, "models": {**base["models"], **models}})

    with pytest.raises(UserError, match=re.escape("not a python compressor spec; write python/<module>:<function>")):
        parse(compressor={"model": "python/just_a_module"})
    with pytest.raises(UserError, match=re.escape("models.predictor.model: 'python/m:f' is a python/ compressor")):
        parse(predictor={"model": "python/m:f"})
    # an LM compressor takes only its own knobs (harness.compressors.lm), never a python/ compressor's kwargs
    with pytest.raises(UserError, match=re.escape("options.k: an LM compressor ('gguf/smollm2-135m') takes only "
                                                  "max_words, ib_terms")):
        parse(compressor={"model": "gguf/smollm2-135m", "options": {"k": 1}})
    with pytest.raises(UserError, match=re.escape("cannot score its own output ('self'); set models.scorer")):
        parse_config({**base, "models": {**base["models"], "compressor": {"model": EXAMPLE}},
                      "mi": {"scorers": ["self"]}})
    # an LM's config dumps without `options`, so every key derived from it stays as before
    cfg = parse(compressor={"model": "gguf/smollm2-135m"})
    assert "options" not in cfg.models.compressor.model_dump()
    assert parse(compressor={"model": EXAMPLE, "options": {"max_sentences": 2}}).models.compressor.options == {
        "max_sentences": 2}


def test_deterministic_mi_is_the_entropy_of_the_outputs():
    assert deterministic_mi_bits(["a", "b", "c", "d"]) == pytest.approx(2.0)
    assert deterministic_mi_bits(["a", "a", "b", "b"]) == pytest.approx(1.0)
    assert deterministic_mi_bits(["x"] * 5) == 0.0
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert deterministic_mi_bits(["a", "a", "a", "b"]) == pytest.approx(h)


@pytest.mark.parametrize("seed", range(20))
def test_any_scorer_estimate_is_a_lower_bound_for_a_deterministic_compressor(seed):
    """Z = f(X): the proxy's estimate (M = 1, any scorer q) never exceeds the exact drawn-set MI H(Z|Q)
    (Barber-Agakov); a scorer that knows f (q = the one-hot channel, softened) approaches it."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    k = int(rng.integers(1, n + 1))
    f = rng.integers(0, k, size=n)  # which output each context maps to
    q = rng.normal(size=(k, n)) * rng.uniform(0.1, 5)  # ln q(z_k | x_l), any scorer (unnormalised is fine)
    logp = q[f][:, None, :]  # (N, 1, N): z_i = f(x_i) scored under every x_l
    exact = deterministic_mi_bits(list(f))
    assert estimate_mi(logp, n_boot=100).bits <= exact + 1e-9
    sharp = np.where(f[None, :] == np.arange(k)[:, None], 0.0, -40.0)[f][:, None, :]  # q(z|x) ≈ 1[f(x) = z]
    assert estimate_mi(sharp, n_boot=100).bits == pytest.approx(exact, abs=1e-6)


def test_lm_compressor_is_a_compressor():
    """Protocol check only (fake backend object, no calls): the LM compressor wraps a backend and a prompt."""
    from harness.config import DEFAULT_PROMPTS

    lm = LMCompressor("gguf/x", object(), DEFAULT_PROMPTS["compressor"], GenParams())
    assert isinstance(lm, Compressor) and not lm.deterministic


# ---------------------------------------------------------------------------- end to end (real models)


def _cfg(tmp_path: Path, compressor: dict, **extra) -> dict:
    return {
        "name": "t-pycomp", "task": TASK,
        "models": {"compressor": compressor, "predictor": {"model": "gguf/smollm2-135m", "dtype": "float32"},
                   "scorer": {"model": "gguf/smollm2-135m", "dtype": "float32"}},
        "arms": ["compressed", "no-context"],
        "generation": {"predictor": {"max_new_tokens": 6}},
        "mi": {"samples_per_context": 4, "scorers": ["scorer"], "n_boot": 200},
        "output": {"dir": str(tmp_path / "out"), "cache": None, "store": str(tmp_path / "store.db")},
        **extra,
    }


def test_python_compressor_runs_end_to_end_with_proxy_mi(tmp_path, monkeypatch):
    """`harness run` with a user's rule-based filter (a module in the current folder): the predictor reads the
    function's text, proxy MI is scored by smollm2 with M = 1, and the exact drawn-set MI bounds it from above."""
    need_pack("smollm2-135m")
    from harness.pipeline.run import format_table, run
    from harness.tasks import load_task

    monkeypatch.chdir(tmp_path)
    mod = _module(tmp_path, "from harness.compressors.examples import keep_relevant_sentences\n\n"
                            "def filt(question, context, max_sentences=2):\n"
                            "    return keep_relevant_sentences(question, context, max_sentences=max_sentences)\n")
    cfg = parse_config(_cfg(tmp_path, {"model": f"python/{mod}:filt", "options": {"max_sentences": 2}}))
    out = run(cfg, quiet=True)
    rows = {r["arm"]: r for r in out["rows"]}
    comp = rows["compressed"]
    assert comp["n"] == 4 and comp["errors"] == 0 and comp["scored"] == 4
    assert comp["summary_tokens"] > 0 and 0 < comp["token_ratio"] < 1  # counted in smollm2's tokenizer
    samples = load_task(TASK["name"], size=TASK["size"], seed=TASK["seed"], options=TASK["options"])
    want = {s.id: keep_relevant_sentences(s.question, s.context, max_sentences=2) for s in samples}
    comps = [json.loads(x) for x in (Path(out["run_dir"]) / "compressions.jsonl").read_text().splitlines()]
    assert len(comps) == 4 and all(c["j"] == 0 and c["error"] is None for c in comps)  # one per context, not M
    assert {c["sample_id"]: c["text"] for c in comps} == want
    (mi,) = out["mi"]
    assert mi["error"] is None and mi["tokenization"] == "proxy" and mi["samples_per_context"] == 1
    assert mi["deterministic"] is True and mi["deterministic_bits"] == pytest.approx(2.0)  # 4 distinct outputs
    assert mi["mc_se_bits"] is None  # nothing sampled given the contexts: n/a, never ±0
    assert mi["bits"] <= mi["deterministic_bits"] + 1e-9
    table = format_table(out)
    assert "exact I(X;Z|Q) = H(Z|Q) over these contexts = 2.000 bits" in table and "±n/a MC" in table
    with sqlite3.connect(tmp_path / "store.db") as db:
        assert db.execute("SELECT backend, name FROM models WHERE backend = 'python'").fetchall() == [
            ("python", f"{mod}:filt")]
        (detail,) = db.execute("SELECT detail_json FROM mi_estimates WHERE group_id = ''").fetchone()
        assert json.loads(detail)["deterministic_bits"] == pytest.approx(2.0)
        n_comp = db.execute("SELECT COUNT(*) FROM compressions").fetchone()[0]
    again = run(cfg, quiet=True)  # the stored compressions are reused: no new rows, the same MI
    assert again["mi"][0]["bits"] == pytest.approx(mi["bits"])
    with sqlite3.connect(tmp_path / "store.db") as db:
        assert db.execute("SELECT COUNT(*) FROM compressions").fetchone()[0] == n_comp == 4


def test_python_compressors_sweep_end_to_end_with_proxy_mi(tmp_path):
    """`harness sweep` over two settings of the shipped rule-based filter: two compressors (their options are their
    identity), one compression per context each, proxy MI per compressor; a rerun makes no new rows."""
    need_pack("smollm2-135m")
    from harness.config import load_sweep_config
    from harness.pipeline.sweep import run_sweep

    comps = [{"model": EXAMPLE, "options": {"max_sentences": k}} for k in (2, 4)]
    cfg = _cfg(tmp_path, comps[0], sweep={"compressors": comps, "predictors": ["gguf/smollm2-135m"]})
    cfg["arms"] = ["compressed"]
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out = run_sweep(load_sweep_config(p), quiet=True)
    assert out["cells"] == 2 and out["units"] == 2
    assert out["predictions"] == {"total": 8, "errors": 0, "first_error": None}
    db = sqlite3.connect(tmp_path / "store.db")
    try:
        rows = db.execute("SELECT m.name, c.sample_index, c.text, c.n_tokens, c.error FROM compressions c "
                          "JOIN models m ON m.model_id = c.compressor_model_id WHERE m.backend = 'python'").fetchall()
        assert len(rows) == 8 and {r[1] for r in rows} == {0} and all(r[4] is None and r[3] > 0 for r in rows)
        assert len({r[2] for r in rows}) == 8  # two options settings: other texts, under other model rows
        mi = db.execute("SELECT bits, n_samples, n_contexts, error, detail_json FROM mi_estimates "
                        "WHERE group_id = ''").fetchall()
        assert len(mi) == 2
        for bits, n_samples, n_contexts, error, detail in mi:
            d = json.loads(detail)
            assert error is None and n_samples == 1 and n_contexts == 4 and d["tokenization"] == "proxy"
            assert d["deterministic"] is True and bits <= d["deterministic_bits"] + 1e-9
            assert d["mc_se_bits"] is None
    finally:
        db.close()
    again = run_sweep(load_sweep_config(p), quiet=True)
    assert again["new_rows"] == {} and again["generate_requests"] == 0 and again["score_requests"] == 0
