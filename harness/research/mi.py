"""The summaries' information content in research mode: I(X;Z|Q) of a compressor-predictor cell's compressor.

Q is a (subquery, subtask) that the predictor planned for several samples of one question group (one question text
gives one greedy plan), and X the passages each sample's search returned for it. With `research.corpus: sample`
each sample searches its own passages, so the contexts differ; with a pooled corpus one query finds the same
passages for every sample and X carries nothing (the estimate is then 0, and says so).

Per shared subquery, M summaries per context are drawn at the MI temperature (plain sampling, seeded per sample,
subquery and draw) with the compress prompt the episode used, stored as compressions (knob hash
`<cell knob hash>/mi/<subquery hash>`, so a rerun reads them back), scored under every context of the group
(`harness.scoring.score_group`: self-scored with exact ids, or by `models.scorer` as a proxy) and estimated with
`harness.mi.estimate_mi`; pooled over subqueries with `estimate_mi_groups`. Rows go to the store's `mi_estimates`
(mode "research", the cell's compressor and knob hash; pooled row group_id ""), so the cell table's MI columns
fill like any other cell's. Where no subquery is shared, the pooled row's error says why MI does not apply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.config import Prompt, RunConfig
from harness.records import Document, Generation, GenParams, GenRequest, Sample, Usage, stable_hash

MODE = "research"


@dataclass(frozen=True)
class SharedQuery:
    """One subquery planned for several samples of a question group: its text, subtask, and per sample (in
    sample order) the passage ids its search returned."""

    group_id: str
    query: str
    subtask: str
    contexts: tuple[tuple[str, tuple[str, ...]], ...]  # (sample_id, retrieved ids)

    @property
    def key(self) -> str:
        return stable_hash({"group": self.group_id, "query": self.query, "subtask": self.subtask})[:10]


def shared_subqueries(steps: Sequence[dict[str, Any]], group_of: dict[str, str], sample_order: Sequence[str],
                      min_contexts: int = 2, cap: int | None = None) -> list[SharedQuery]:
    """The (group, subquery, subtask) keys that error-free compress steps of at least `min_contexts` samples of one
    question group share (pure). `steps`: trace rows with sample_id and payload {query, subtask, ids}; a sample's
    first step of a key counts; contexts in `sample_order`, at most `cap`. Queries match ignoring case and spacing."""
    order = {s: i for i, s in enumerate(sample_order)}
    found: dict[tuple[str, str, str], dict[str, tuple[str, ...]]] = {}
    shown: dict[tuple[str, str, str], str] = {}
    for st in steps:
        p = st["payload"]
        sid = st["sample_id"]
        if st.get("error") or sid not in group_of or not isinstance(p.get("query"), str):
            continue
        q = " ".join(p["query"].split())
        k = (group_of[sid], q.lower(), " ".join(str(p.get("subtask", q)).split()))
        shown.setdefault(k, q)
        found.setdefault(k, {}).setdefault(sid, tuple(p.get("ids") or ()))
    out = []
    for k, ctx in found.items():
        sids = sorted(ctx, key=lambda s: order.get(s, len(order)))[: cap or None]
        if len(sids) >= min_contexts:
            out.append(SharedQuery(k[0], shown[k], k[2], tuple((s, ctx[s]) for s in sids)))
    return sorted(out, key=lambda g: (g.group_id, order.get(g.contexts[0][0], 0), g.query))


def compress_prompt() -> Prompt:
    """The episode's compress prompt with the subtask as {question} and the passages as {context}, the names the
    scorer's `score_group` renders."""
    from harness.research.protocol import COMPRESS

    return Prompt(system=COMPRESS.system,
                  user=COMPRESS.user.replace("{subtask}", "{question}").replace("{passages}", "{context}"))


def no_mi_reason(n_steps: int, corpus: str) -> str:
    """Why a cell gets no research MI estimate (stored as the pooled row's error)."""
    if n_steps == 0:
        return "MI does not apply: the cell has no error-free compress step (every plan failed or nothing ran)"
    return ("MI does not apply: no subquery was planned for two or more samples of one question group (the estimator "
            "needs several contexts behind one subquery); use a task whose groups share a question text "
            f"(synthetic-*: several samples per template) with research.corpus: sample (now {corpus!r})")


def research_mi(cfg: RunConfig, cell: Any, samples: Sequence[Sample], search_for: Callable[[Sample], Any],
                store: Any, run_id: str, compressor: Any, compressor_model_id: int,
                scorers: Sequence[tuple[str, Any, int]], fit: Callable[..., Any]) -> list[dict[str, Any]]:
    """Estimate the cell's summaries' MI for each scorer (label, backend, model id); write the rows; return the
    pooled rows (see the module docstring). `fit(build, text)` fits a compress request to the compressor's window
    like the episode (a context cut to fit is refused: its draws would not be of the context they are scored
    under)."""
    from harness.mi import bits_per_token, estimate_mi, estimate_mi_groups
    from harness.pipeline.plan import sample_seed
    from harness.prompts import render
    from harness.research.search import passages_text
    from harness.scoring import score_group

    mi = cfg.mi
    assert mi is not None
    by_id = {s.id: s for s in samples}
    steps = [r for r in store.trace(cell.cell_id) if r["kind"] == "compress"]
    ok_steps = [r for r in steps if not r.get("error")]
    shared = shared_subqueries(ok_steps, {s.id: s.group_id or s.id for s in samples}, [s.id for s in samples],
                               mi.min_contexts, mi.contexts_per_group)
    m = mi.samples_per_context
    base = {"run_id": run_id, "task": cfg.task.name, "compressor_model_id": compressor_model_id, "mode": MODE,
            "knob_hash": cell.knob_hash}
    sampling = {"temperature": mi.temperature, "top_p": 1.0, "top_k": 0, "samples_per_context": m}
    prompt = compress_prompt()
    # draws: per shared subquery, M summaries per context (stored, or generated in one batch for all subqueries)
    draws: dict[str, list[list[Generation]] | str] = {}
    pseudo: dict[str, list[Sample]] = {}
    rows_of: dict[str, list[list[Generation | None]]] = {}
    todo: list[tuple[SharedQuery, int, int, GenRequest]] = []
    for g in shared:
        kh = f"{cell.knob_hash}/mi/{g.key}"
        xs, rows, err, mine = [], [], None, []
        for a, (sid, ids) in enumerate(g.contexts):
            s = by_id[sid]
            tool = search_for(s)
            text = passages_text([tool.hit(i) for i in ids])
            req, trunc, ferr = fit(lambda t, sub=g.subtask: GenRequest.chat(
                render(prompt, question=sub, context=t), GenParams()), text)
            if ferr or req is None or trunc:
                err = (f"the passages of {sid} for '{g.query}' do not fit the compressor's window"
                       + (f": {ferr}" if ferr else " (cut to fit)"))
                break
            xs.append(Sample(id=sid, question=g.subtask, documents=(Document("passages", text),), answers=(),
                             group_id=g.key))  # its `context` is exactly the passages text
            row: list[Generation | None] = []
            for j in range(m):
                seed = sample_seed(cfg.seed, f"{sid}|{g.key}", j)
                old = store.find_compression(compressor_model_id=compressor_model_id, task=cfg.task.name,
                                             sample_id=sid, knob_hash=kh, sample_index=j, seed=seed)
                if old is not None and old.error is None:
                    u = old.usage or Usage()
                    row.append(Generation(old.text, list(old.token_ids or []), None, u,
                                          finish_reason=old.finish_reason or ""))
                    continue
                row.append(None)
                params = GenParams(max_new_tokens=cfg.generation.compressor.max_new_tokens,
                                   temperature=mi.temperature, top_p=1.0, top_k=0, seed=seed)
                mine.append((g, a, j, GenRequest(messages=req.messages, params=params)))
            rows.append(row)
        if err is not None:
            draws[g.key] = err
            continue
        todo += mine
        rows_of[g.key] = rows
        pseudo[g.key] = xs
    gens = compressor.generate([t[3] for t in todo]) if todo else []
    for (g, a, j, r), gen in zip(todo, gens, strict=True):
        store.add_compression(compressor_model_id=compressor_model_id, task=cfg.task.name, sample_id=g.contexts[a][0],
                              knob_hash=f"{cell.knob_hash}/mi/{g.key}", text=gen.text, sample_index=j,
                              seed=r.params.seed, token_ids=gen.token_ids or None,
                              n_tokens=gen.usage.completion_tokens, context_tokens=gen.usage.prompt_tokens,
                              finish_reason=gen.finish_reason,
                              params={"kind": "research-mi", "cell_id": cell.cell_id, "group": g.group_id,
                                      "query": g.query, "subtask": g.subtask, **sampling},
                              error=gen.error, run_id=run_id, usage=gen.usage,
                              prompt=[{"role": ro, "content": c} for ro, c in r.messages])
        rows_of[g.key][a][j] = gen
    for k, rows in rows_of.items():
        bad = next((gen.error for row in rows for gen in row if gen is not None and gen.error), None)
        draws[k] = f"a summary draw failed: {bad}" if bad else rows  # type: ignore[assignment]
    pooled = []
    for label, scorer, scorer_id in scorers:
        exact = scorer is compressor
        ok_logp, ok_tok, errors = [], [], []
        for g in shared:
            row = {**base, "scorer_model_id": scorer_id, "group_id": f"{g.group_id}|{g.key}",
                   "n_contexts": len(g.contexts), "n_samples": m, "sampling": sampling}
            d = draws[g.key]
            detail = {"query": g.query, "subtask": g.subtask, "samples": [c[0] for c in g.contexts],
                      "retrieved": [list(c[1]) for c in g.contexts], "scorer": label,
                      "same_passages": len({c[1] for c in g.contexts}) == 1}
            if isinstance(d, str):
                errors.append(d)
                store.add_mi_estimate(**row, error=d, detail=detail)
                continue
            gl = score_group(scorer, pseudo[g.key], d, prompt, exact_ids=exact)
            if gl.error:
                errors.append(gl.error)
                store.add_mi_estimate(**row, error=gl.error, detail=detail)
                continue
            est = estimate_mi(gl.logp, n_boot=mi.n_boot, seed=cfg.seed, scorer_is_sampler=gl.tokenization
                              == "exact-ids", plain_sampling=mi.temperature == 1.0)
            mt = float(gl.tokens.mean())
            store.add_mi_estimate(**row, bits=est.bits, ci_lo=est.ci[0], ci_hi=est.ci[1], upper_bits=est.upper_bits,
                                  upper_is_bound=est.upper_is_bound, saturated_fraction=est.saturated_fraction,
                                  bits_per_token=bits_per_token(est.bits, mt), mean_tokens=mt,
                                  detail={**detail, "tokenization": gl.tokenization, "mc_se_bits": est.mc_se_bits})
            ok_logp.append(gl.logp)
            ok_tok.append(gl.tokens)
        prow = {**base, "scorer_model_id": scorer_id, "group_id": "", "n_samples": m, "sampling": sampling}
        if not shared:
            err = no_mi_reason(len(ok_steps), cfg.research.corpus if cfg.research else "?")
            store.add_mi_estimate(**prow, error=err, detail={"scorer": label, "shared_subqueries": 0})
            pooled.append({"scorer": label, "error": err})
        elif errors:
            err = f"{len(errors)} of {len(shared)} shared-subquery estimates failed: {errors[0]}"
            store.add_mi_estimate(**prow, error=err, detail={"scorer": label, "shared_subqueries": len(shared)})
            pooled.append({"scorer": label, "error": err})
        else:
            est = estimate_mi_groups(ok_logp, n_boot=mi.n_boot, seed=cfg.seed,
                                     scorer_is_sampler=exact, plain_sampling=mi.temperature == 1.0)
            mt = float(np.concatenate([t.ravel() for t in ok_tok]).mean())
            bpt = bits_per_token(est.bits, mt)
            n_ctx = sum(x.shape[0] for x in ok_logp)
            store.add_mi_estimate(**prow, n_contexts=n_ctx, bits=est.bits, ci_lo=est.ci[0], ci_hi=est.ci[1],
                                  upper_bits=est.upper_bits, upper_is_bound=est.upper_is_bound,
                                  saturated_fraction=est.saturated_fraction, bits_per_token=bpt, mean_tokens=mt,
                                  detail={"scorer": label, "shared_subqueries": len(shared),
                                          "mc_se_bits": est.mc_se_bits,
                                          "mc_ci": list(est.mc_ci) if est.mc_ci is not None else None})
            pooled.append({"scorer": label, "bits": est.bits, "bits_per_token": bpt, "n_contexts": n_ctx,
                           "shared_subqueries": len(shared), "error": None})
    return pooled

