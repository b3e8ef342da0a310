"""RAG filters (`filter/<kind>` compressors), IB terms and the ib-oracle's choice, gold-support precision/recall."""

from __future__ import annotations

import pytest

from harness.compressors import make_compressor
from harness.compressors.filters import (
    FilterCompressor,
    filter_options,
    rank,
    select_budget,
    sentences,
)
from harness.compressors.ib import IBScorer, IBTerms, compression_row, select_ib
from harness.config import parse_config
from harness.errors import UserError
from harness.records import Document, GenParams, Sample
from harness.retrieval.gold import gold_support, kept_sentences, support_precision_recall
from harness.tasks import load_task
from tests.conftest import need_pack


@pytest.fixture(scope="module")
def multidoc() -> list[Sample]:
    return load_task("synthetic-multidoc", size=4, seed=0, options={"context_tokens": 0, "n_distractors": 2})


@pytest.fixture(scope="module")
def tok():
    """smollm2's tokenizer only (no weights load): counts and truncates."""
    need_pack("smollm2-135m")
    from harness.backends.transformers import TransformersBackend

    return TransformersBackend("gguf", "smollm2-135m", dtype="float32")


def _cfg(model: str, options: dict | None = None, **extra) -> object:
    comp = {"model": model, "tokenizer": "gguf/smollm2-135m"}
    if options:
        comp["options"] = options
    return parse_config({"task": {"name": "synthetic-multidoc", "size": 2},
                         "models": {"compressor": comp, "predictor": {"model": "gguf/smollm2-135m"}, **extra}})


# ---- pure pieces ----

def test_select_budget_and_rank() -> None:
    assert rank([0.1, 3.0, 3.0, 2.0]) == [1, 2, 3, 0]  # ties to the earlier sentence
    order, lengths = [1, 2, 3, 0], [5, 9, 4, 3]
    assert select_budget(order, lengths, sentences=2) == [1, 2]
    assert select_budget(order, lengths, tokens=12) == [1, 3]  # 9 fits, 4 would overflow (skipped), 3 fits, 5 not
    assert select_budget(order, lengths, sentences=1, tokens=4) == [2]  # 9 skipped, 4 fits
    assert select_budget(order, lengths, sentences=0) == []


def test_sentences_use_labels_else_split() -> None:
    s = Sample("s", "q?", (Document("d", "One. Two!\nThree"),), ("a",))
    assert [u.text for u in sentences(s)] == ["One.", "Two!", "Three"]
    labelled = Sample("s", "q?", (Document("d", "A b. C d."),), ("a",), meta={"doc_sentences": {"d": ["A b. C d."]}})
    assert [(u.doc_id, u.index) for u in sentences(labelled)] == [("d", 0)]


def test_gold_support_precision_recall() -> None:
    assert support_precision_recall([("a", 0), ("b", 1)], [("a", 0), ("c", 2)]) == (0.5, 0.5)
    assert support_precision_recall([], [("a", 0)]) == (None, 0.0)
    sents = {"a": ["Ann was born in 1950.", "Ann sings."], "b": ["Bo skis."]}
    assert kept_sentences(sents, "Ann  was born in 1950. Bo skis") == {("a", 0)}  # a cut sentence is not kept
    g = gold_support({"doc_sentences": sents, "supporting_sentences": [["a", 0]]}, "Ann was born in 1950. Bo skis.")
    assert g == {"support_precision": 0.5, "support_recall": 1.0, "kept_sentences": 2}
    assert gold_support({}, "x") == {}


def test_select_ib_abstains_when_no_candidate_raises_p_y() -> None:
    """Pure: given log-probs. No candidate makes the answer more likely, so the empty compression (cheapest) wins."""
    base = (-3.0, -5.0)  # ln p(y|q) of two aliases
    empty = IBTerms(-0.2, base, base)
    helps_not = IBTerms(-12.0, (-3.0, -5.0), base)  # same p(y): correctness 0, costs 17 bits
    hurts = IBTerms(-6.0, (-4.0, -6.0), base)
    terms = [empty, helps_not, hurts]
    assert empty.correctness == 0.0 and helps_not.correctness == pytest.approx(0.0)
    assert hurts.correctness < 0
    assert select_ib(terms) == 0
    # a candidate that raises p(y) by 1 nat per alias (1.44 bits, x10 = 14.4) beats abstaining despite 8.7 bits
    helps = IBTerms(-6.0, (-2.0, -4.0), base)
    assert select_ib([*terms, helps]) == 3
    assert helps.score() == pytest.approx(6.0 / 0.6931471805599453 - 10 * 1.0 / 0.6931471805599453)
    # with beta 0 only conciseness counts: abstain again
    assert select_ib([*terms, helps], beta=0.0) == 0


def test_ib_terms_combine_aliases_by_logsumexp() -> None:
    t = IBTerms(-1.0, (-1.0, -1.0), (-2.0, -2.0), tokens=5, retrieved_tokens=50)
    assert t.correctness == pytest.approx(1.0 / 0.6931471805599453)  # log-sum-exp: both aliases rise by 1 nat
    assert t.rate == 0.1 and t.to_json()["compression_rate"] == 0.1


def test_filter_options_errors() -> None:
    with pytest.raises(UserError, match=r"models.compressor.model: unknown filter 'filter/fancy'"):
        filter_options("fancy", {})
    with pytest.raises(UserError, match=r"options.k: filter/truncate has no option 'k'; allowed: tokens"):
        filter_options("truncate", {"k": 3})
    with pytest.raises(UserError, match=r"options.tokens: filter/truncate needs an integer >= 0"):
        filter_options("truncate", {})
    with pytest.raises(UserError, match=r"filter/extractive needs a budget"):
        filter_options("extractive", {"by": "bm25"})
    with pytest.raises(UserError, match=r"options.by: 'tfidf'"):
        filter_options("extractive", {"by": "tfidf", "sentences": 2})
    with pytest.raises(UserError, match=r"options.budgets"):
        filter_options("ib-oracle", {"budgets": [0]})
    with pytest.raises(UserError, match=r"options.abstractive: an LM compressor spec"):
        filter_options("ib-oracle", {"abstractive": "python/m:f"})
    with pytest.raises(UserError, match=r"filter/ib-oracle scores its candidates with models.scorer"):
        make_compressor(_cfg("filter/ib-oracle"))


def test_filter_config_rules() -> None:
    """filter/ specs take options, only compress, and cannot score themselves for MI."""
    cfg = _cfg("filter/extractive", {"sentences": 2})
    assert cfg.models.compressor.options == {"sentences": 2}
    with pytest.raises(UserError, match=r"is a filter/ compressor; the predictor must be a language model"):
        parse_config({"task": {"name": "synthetic-multidoc"}, "models": {"predictor": {"model": "filter/full"}}})
    with pytest.raises(UserError, match=r"filter/ compressor, which cannot"):
        parse_config({"task": {"name": "synthetic-multidoc"}, "mi": {"scorers": ["self"]},
                      "models": {"compressor": {"model": "filter/full"}, "predictor": {"model": "gguf/smollm2-135m"}}})


# ---- every filter on real samples, through make_compressor ----

def _run(comp, samples: list[Sample]) -> list:
    jobs = [(comp.prepare(s, "error")[0], GenParams()) for s in samples]
    return comp.compress(jobs)


def test_full_and_truncate(multidoc: list[Sample], tok) -> None:
    full = make_compressor(_cfg("filter/full"))
    assert isinstance(full, FilterCompressor) and full.deterministic
    out = _run(full, multidoc)
    assert [g.text for g in out] == [s.context for s in multidoc] and out[0].finish_reason == "stop"
    trunc = make_compressor(_cfg("filter/truncate", {"tokens": 20}))
    out = _run(trunc, multidoc)
    for s, g in zip(multidoc, out, strict=True):
        assert g.error is None and s.context.startswith(g.text) and 15 <= tok.count_tokens(g.text) <= 20
        assert g.usage.completion_tokens == tok.count_tokens(g.text) and g.usage.prompt_tokens > 20
    assert full.identity() != trunc.identity()
    assert make_compressor(_cfg("filter/truncate", {"tokens": 21})).identity() != trunc.identity()


def test_extractive_bm25_keeps_the_supporting_sentence(multidoc: list[Sample], tok) -> None:
    comp = make_compressor(_cfg("filter/extractive", {"by": "bm25", "sentences": 2}))
    out = _run(comp, multidoc)
    s = multidoc[1]  # "In which year was Pinecrest Retail founded?"
    assert "Pinecrest Retail was founded in 1900" in out[1].text
    g = gold_support(s.meta, out[1].text)
    assert g["kept_sentences"] == 2 and g["support_recall"] == 1.0 and g["support_precision"] == 0.5
    assert [x.text for x in _run(comp, multidoc)] == [x.text for x in out]  # deterministic
    by_tokens = make_compressor(_cfg("filter/extractive", {"tokens": 30}))
    for g in _run(by_tokens, multidoc):
        kept = kept_sentences(multidoc[0].meta["doc_sentences"] | {}, g.text)
        assert g.text and tok.count_tokens(g.text) <= 30 + 3 and kept is not None  # joins may add a token each


@pytest.mark.slow
def test_extractive_by_embedding(multidoc: list[Sample]) -> None:
    from harness.backends import packs
    from tests.conftest import need

    try:
        packs.fetch("minilm-l6", log=lambda *_: None)
    except Exception as e:
        need(False, f"minilm-l6 pack not available: {e}")
    comp = make_compressor(_cfg("filter/extractive", {"by": "embedding", "sentences": 1}))
    out = _run(comp, multidoc)
    assert all(g.error is None and len(kept_sentences(s.meta["doc_sentences"], g.text)) == 1
               for s, g in zip(multidoc, out, strict=True))
    assert out[1].text.startswith("Pinecrest Retail")  # the sentence closest to the question names its company


# ---- IB terms and the ib-oracle with a real scorer (smollm2, float32) ----

@pytest.mark.slow
def test_ib_terms_and_oracle_on_smollm2(multidoc: list[Sample], smollm2, tok) -> None:
    s = multidoc[1]  # the answer 1900 is in one sentence
    ib = IBScorer(smollm2, tokenizer=tok)
    gold = "Pinecrest Retail was founded in 1900 by Daniel Castillo."
    distractor = "Marrowdale is a town in Hask County."
    empty, g, d = ib.terms(s, ["", gold, distractor], retrieved_tokens=tok.count_tokens(s.context))
    assert empty.correctness == 0.0 and empty.tokens == 0 and empty.conciseness > 0
    assert g.correctness > 4.0 > 2.0 > d.correctness  # only the supporting sentence makes "1900" much likelier
    assert g.conciseness > empty.conciseness and 0 < g.rate < 0.2
    assert select_ib([empty, g, d]) == 1
    from harness.compressors.lm import LMCompressor
    from harness.config import DEFAULT_PROMPTS

    lm = LMCompressor("gguf/smollm2-135m", smollm2, DEFAULT_PROMPTS["compressor"], GenParams(max_new_tokens=24))
    comp = FilterCompressor("filter/ib-oracle", {"budgets": [2], "max_single": 2}, tokenizer=tok, ib=ib,
                            abstractive=lm)
    [gen] = _run(comp, [s])
    det = comp.details[s.id]
    names = [c["name"] for c in det["candidates"]]
    assert names[0] == "empty" and names[-1] == "abstractive" and len(names) >= 4
    chosen = next(c for c in det["candidates"] if c["name"] == det["chosen"])
    assert chosen["ib_score"] == min(c["ib_score"] for c in det["candidates"])
    assert det["chosen"] != "empty" and "1900" in gen.text  # at beta 10 the oracle keeps the answer's sentence
    row = compression_row(s, gen.text, IBTerms(**{k: chosen[k] for k in ("logp_xt_q", "tokens", "retrieved_tokens")},
                                               logp_y_xt_q=tuple(chosen["logp_y_xt_q"]),
                                               logp_y_q=tuple(chosen["logp_y_q"])))
    assert row["ib_score"] == pytest.approx(chosen["ib_score"]) and row["support_recall"] == 1.0


# ---- IB terms carried by every filter compression and stored; the learned filter ----

def test_learned_pure_pieces() -> None:
    import numpy as np

    from harness.compressors.learned import (
        FEATURES,
        fit_logistic,
        kept_labels,
        predict_keep,
        predict_proba,
        sentence_features,
    )

    x = sentence_features("When was Pinecrest founded?", ["Pinecrest was founded in 1900.", "A town."],
                          [2.0, 0.5], [7, 3], [0, 1], [0, 4])
    assert x.shape == (2, len(FEATURES)) and x[0, 1] == 1.0 and x[1, 1] == 0.25  # score over the best
    assert x[0, 3] == pytest.approx(2 / 3) and x[1, 3] == 0.0  # pinecrest, founded of {when?, pinecrest, founded}
    assert x[0, 5] == 1.0 and x[1, 5] == 0.0 and x[1, 6] == 0.5 and x[1, 7] == 0.2
    assert kept_labels(["A b.", "C d.", "E."], "A  b. E.").tolist() == [1, 0, 1]
    assert kept_labels(["A b."], "").tolist() == [0]  # abstain keeps nothing
    assert predict_keep(np.array([0.2, 0.9, 0.6, 0.9]), 0.5, 2) == [1, 3]  # best first, ties earlier, context order
    assert predict_keep(np.array([0.2, 0.4]), 0.5, 3) == []  # none above the threshold: abstain
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(80, 3))
    y = (feats[:, 0] > 0).astype(int)
    m1, m2 = fit_logistic(feats, y, seed=0), fit_logistic(feats, y, seed=0)
    assert m1 == m2  # seeded and deterministic
    assert ((predict_proba(m1, feats) >= 0.5) == y).mean() > 0.95
    const = fit_logistic(feats, np.zeros(80, dtype=int), seed=0)  # the oracle always abstained
    assert (predict_proba(const, feats) < 0.01).all()


def test_ib_learned_options() -> None:
    with pytest.raises(UserError, match="train_ids"):
        filter_options("ib-learned", {})
    with pytest.raises(UserError, match="threshold"):
        filter_options("ib-learned", {"train_ids": ["a"], "threshold": 2})
    assert filter_options("ib-learned", {"train_ids": ["a"]})["max_sentences"] == 4


def test_ib_learned_trains_on_a_tiny_split(multidoc: list[Sample], smollm2, tok, tmp_path, monkeypatch) -> None:
    """Real smollm2 float32 labels 3 training samples with the ib-oracle; the regression is cached by the scorer and
    training data, and a second filter on the same data loads it instead of scoring again."""
    from harness.backends.base import STATS
    from harness.compressors.learned import artefact_dir

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    train, test = multidoc[:3], multidoc[3]
    opts = {"train_ids": [s.id for s in train], "budgets": [1, 2], "max_single": 3, "threshold": 0.5}
    ib = IBScorer(smollm2, tokenizer=tok)
    comp = FilterCompressor("filter/ib-learned", opts, tokenizer=tok, ib=ib, train=train)
    [gen] = _run(comp, [test])
    assert not gen.error
    model = comp.learner.model
    files = list(artefact_dir().glob("*.json"))
    assert len(files) == 1 and files[0].stem == comp.learner.key
    assert model["n_samples"] == 3 and model["n_sentences"] > 10 and model["train_seconds"] > 0
    assert 0 <= model["train_sentence_agreement"] <= 1
    kept = [u.text for u in sentences(test) if u.text in gen.text]
    assert len(kept) <= 4 and (gen.text == "" or " ".join(kept) == gen.text)  # whole sentences, or abstain
    assert gen.terms is not None and gen.terms["abstain"] == float(gen.text == "")  # its own IB terms, scored
    n0 = STATS["score_requests"]
    again = FilterCompressor("filter/ib-learned", opts, tokenizer=tok, ib=ib, train=train)
    assert again.learner.fit() == model and STATS["score_requests"] == n0  # the cached artefact: no scoring
    assert again.identity() == comp.identity()
    other = FilterCompressor("filter/ib-learned", {**opts, "train_ids": [train[0].id]}, tokenizer=tok, ib=ib,
                             train=train[:1])
    assert other.identity() != comp.identity()  # another training set is another filter


def test_ib_learned_trains_on_the_oracle_labels_at_its_beta(multidoc: list[Sample], smollm2, tok, tmp_path,
                                                            monkeypatch) -> None:
    """Real smollm2 float32 scorer on 2 training samples: an ib-learned filter per beta has its own artefact key and
    identity and trains on the ib-oracle's choices at that beta (its kept-sentence labels equal those of the
    oracle's choice at the same beta); beta 0 and 1000 label differently (abstain vs keep)."""
    import numpy as np

    from harness.compressors.learned import kept_labels

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    train = multidoc[:2]
    ib = IBScorer(smollm2, tokenizer=tok)
    base = {"train_ids": [s.id for s in train], "budgets": [1], "max_single": 2}
    labels, keys, idents = {}, set(), set()
    for beta in (0, 1000):
        comp = FilterCompressor("filter/ib-learned", {**base, "beta": beta}, tokenizer=tok, ib=ib, train=train)
        oracle = FilterCompressor("filter/ib-oracle", {"budgets": [1], "max_single": 2, "beta": beta},
                                  tokenizer=tok, ib=ib)
        want = []
        for s in train:
            units, _ = comp.learner.features(s)
            want.append(kept_labels([u.text for u in units], oracle.text(s)))
        labels[beta] = np.concatenate(want)
        model = comp.learner.fit()
        assert model["n_kept"] == int(labels[beta].sum()) and model["n_sentences"] == labels[beta].size
        keys.add(comp.learner.key)
        idents.add(comp.identity())
    assert len(keys) == 2 and len(idents) == 2  # one artefact and one filter per beta
    assert labels[0].sum() < labels[1000].sum()  # the beta decides what the oracle keeps, so what it learns


def test_filter_ib_terms_stored_after_a_real_run(tmp_path) -> None:
    """A tiny real `harness run` (smollm2 predictor and float32 scorer) stores every extractive compression's IB
    terms in compression_terms, with the scorer's model id; the report shows their per-filter means."""
    need_pack("smollm2-135m")
    from harness.analyze.report import build_report
    from harness.pipeline.run import run
    from harness.store import Store

    store = tmp_path / "s.db"
    cfg = parse_config({
        "name": "ibterms", "task": {"name": "synthetic-multidoc", "size": 2, "options": {"n_distractors": 2}},
        "models": {"compressor": {"model": "filter/extractive", "options": {"sentences": 2},
                                  "tokenizer": "gguf/smollm2-135m"},
                   "predictor": {"model": "gguf/smollm2-135m", "dtype": "float32"},
                   "scorer": {"model": "gguf/smollm2-135m", "dtype": "float32"}},
        "generation": {"predictor": {"max_new_tokens": 8}},
        "output": {"dir": str(tmp_path / "run"), "store": str(store)}})
    run(cfg, quiet=True)
    st = Store.open(str(store))
    comps = st.rows("compressions")
    assert len(comps) == 2
    for c in comps:
        t = st.compression_terms(c["compression_id"])
        assert {"conciseness_bits", "correctness_bits", "ib_score", "compression_rate", "abstain"} <= set(t)
        assert t["ib_score"] == pytest.approx(t["conciseness_bits"] - 10 * t["correctness_bits"])
        assert 0 < t["compression_rate"] < 1 and t["abstain"] == 0.0
    rows = st.rows("compression_terms")
    assert {r["scorer_model_id"] for r in rows} != {None}
    st.close()
    rep = build_report(store, tmp_path / "report")
    text = rep.path.read_text()
    assert "## IB terms per filter" in text and "extractive" in text


def test_sweep_filters_share_one_scorer_load(tmp_path) -> None:
    """A real sweep of two filter settings with a float32 smollm2 scorer loads the scorer once for both (the filters
    share the sweep's scorer backend) and the predictor once: 2 model loads, and every compression has IB terms."""
    need_pack("smollm2-135m")
    from harness.config import parse_sweep_config
    from harness.pipeline.sweep import run_sweep
    from harness.store import Store

    cfg = parse_sweep_config({
        "name": "share", "task": {"name": "synthetic-multidoc", "size": 2, "options": {"n_distractors": 2}},
        "models": {"compressor": {"model": "filter/full", "tokenizer": "gguf/smollm2-135m"},
                   "predictor": {"model": "gguf/smollm2-135m", "dtype": "float32"},
                   "scorer": {"model": "gguf/smollm2-135m", "dtype": "float32"}},
        "arms": ["compressed"], "generation": {"predictor": {"max_new_tokens": 4}},
        "sweep": {"compressors": [{"model": "filter/extractive", "tokenizer": "gguf/smollm2-135m",
                                   "options": {"sentences": n}} for n in (1, 2)],
                  "predictors": ["gguf/smollm2-135m"]},
        "output": {"dir": str(tmp_path / "out"), "store": str(tmp_path / "s.db"), "cache": None}})
    out = run_sweep(cfg, quiet=True)
    assert out["model_loads"] == 2  # the scorer once for both filter settings, the predictor once
    st = Store.open(str(tmp_path / "s.db"))
    comps = st.rows("compressions")
    assert len(comps) == 4 and all(st.compression_terms(c["compression_id"]) for c in comps)
    st.close()
