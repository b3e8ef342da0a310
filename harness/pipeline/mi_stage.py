"""MI stage: score sampled compressions under every context of their question group, then estimate."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from harness.config import LM_BACKENDS, RunConfig
from harness.mi import MIEstimate, bits_per_token, deterministic_mi_bits, estimate_mi, estimate_mi_groups
from harness.pipeline.compress import CompKey, CompressOutput
from harness.pipeline.plan import compression_knob_hash, draws_per_context
from harness.pipeline.sinks import Sink
from harness.pipeline.stages import progress_bar
from harness.records import Sample
from harness.scoring import score_group


def question_groups(cfg: RunConfig, samples: list[Sample]) -> list[list[int]]:
    """Sample indices per group: same question (group_id); `paper` mode pools all contexts."""
    assert cfg.mi is not None
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for idx, s in enumerate(samples):
        key = "all" if cfg.mi.mode == "paper" else s.group_id
        groups.setdefault(key, []).append(idx)
    cap = cfg.mi.contexts_per_group
    out = [g[:cap] if cap else g for g in groups.values()]
    return [g for g in out if len(g) >= cfg.mi.min_contexts]


def _context_terms(sample_ids: list[str], est: MIEstimate) -> dict[str, dict[str, float | None]]:
    """Per-context terms keyed by sample id (mean over the M draws, and their variance; None when M = 1)."""
    var = [None if not np.isfinite(v) else float(v) for v in est.context_var_bits]
    return {"context_bits": dict(zip(sample_ids, map(float, est.context_bits), strict=True)),
            "context_var_bits": dict(zip(sample_ids, var, strict=True))}


def mi_stage(cfg: RunConfig, scorer: Any, scorer_label: str, compressor_identity: Any, samples: list[Sample],
             comp: CompressOutput, writer: Sink, *, quiet: bool = True, leave: bool = True) -> dict[str, Any]:
    """Estimate I(X;Z|Q) for one scorer; per-group rows and the overall row are written; returns the overall.

    Unless `quiet`, a progress bar counts score requests, one context at a time.
    """
    mi = cfg.mi
    assert mi is not None
    m = draws_per_context(cfg)
    groups = question_groups(cfg, samples)
    desc = f"MI {scorer_label} ← {cfg.models.compressor.model if cfg.models.compressor else '?'}"
    with progress_bar(sum(len(g) ** 2 * m for g in groups), desc, quiet, leave) as bar:
        return _mi_groups(cfg, scorer, scorer_label, compressor_identity, samples, comp, writer, groups, bar)


def _mi_groups(cfg: RunConfig, scorer: Any, scorer_label: str, compressor_identity: Any, samples: list[Sample],
               comp: CompressOutput, writer: Sink, groups: list[list[int]], progress: Any) -> dict[str, Any]:
    mi = cfg.mi
    assert mi is not None
    m = draws_per_context(cfg)  # 1 for a sampling-free compressor (python/, filter/): its draws would be one text
    deterministic = cfg.models.compressor is not None and cfg.models.compressor.backend not in LM_BACKENDS
    ident = scorer.identity()
    exact = ident == compressor_identity
    plain = mi.temperature == 1.0
    base = {"task": cfg.task.name, "compressor": cfg.models.compressor.model if cfg.models.compressor else None,
            "scorer": scorer_label, "scorer_identity": ident.key(), "mode": mi.mode, "samples_per_context": m,
            "knob_hash": compression_knob_hash(cfg),
            "sampling": {"temperature": mi.temperature, "top_p": 1.0, "top_k": 0} if not deterministic else None,
            "deterministic": deterministic}
    ok_logp, ok_tokens, fwd, lower, errors, toks = [], [], 0, 0, [], set()
    ctx_terms: list[dict[str, dict[str, float | None]]] = []
    det_bits: list[tuple[float, int]] = []  # deterministic compressors: (exact drawn-set bits, contexts) per group
    for g in groups:
        gid = samples[g[0]].group_id if mi.mode != "paper" else "all"
        comps = [[comp.results.get(CompKey(idx, "sample", j)) for j in range(m)] for idx in g]
        bad = [samples[g[a]].id for a, row in enumerate(comps) for c in row if c is None or c.error]
        cut = [samples[idx].id for idx, row in zip(g, comps, strict=True)
               if comp.truncated.get(idx) or any(c is not None and c.truncated_prompt for c in row)]
        row = {**base, "group_id": gid, "n_contexts": len(g)}
        if bad or cut:
            row["error"] = (f"compression missing or failed for {bad[0]}" if bad else
                            f"the context of {cut[0]} was truncated to fit the compressor's window, so its "
                            "compressions were not generated from the context MI scores them under; raise "
                            "context_window, shorten the task's contexts, or set overflow: error")
            errors.append(row["error"])
            writer.mi(row)
            progress.update(len(g) ** 2 * m)
            continue
        gl = score_group(scorer, [samples[i] for i in g], comps, cfg.prompts.compressor, exact_ids=exact,
                         mode=mi.mode, progress=progress)
        row["tokenization"] = gl.tokenization
        if gl.error:
            row["error"] = gl.error
            errors.append(gl.error)
            writer.mi(row)
            continue
        # the upper bound needs the sampler's exact ids: a compressor without ids (a server) is scored as text
        toks.add(gl.tokenization)
        est = estimate_mi(gl.logp, n_boot=mi.n_boot, seed=cfg.seed,
                          scorer_is_sampler=gl.tokenization == "exact-ids", plain_sampling=plain)
        mean_tok = float(gl.tokens.mean())
        row.update(est.to_dict())
        row.pop("pointwise_bits", None)
        row.update(_context_terms(gl.sample_ids, est))
        ctx_terms.append(_context_terms(gl.sample_ids, est))
        row.update({"mean_tokens": mean_tok, "bits_per_token": bits_per_token(est.bits, mean_tok),
                    "forwarded_tokens": gl.forwarded_tokens, "lower_bound_tokens": gl.lower_bound_tokens,
                    "error": None})
        if deterministic:  # the exact drawn-set MI H(Z|Q); the scorer's bits are a lower bound on it
            row["deterministic_bits"] = deterministic_mi_bits([c[0].text for c in comps])
            det_bits.append((row["deterministic_bits"], len(g)))
        writer.mi(row)
        ok_logp.append(gl.logp)
        ok_tokens.append(gl.tokens)
        fwd += gl.forwarded_tokens
        lower += gl.lower_bound_tokens
    overall: dict[str, Any] = {**base, "group_id": "*", "n_groups": len(groups), "n_groups_ok": len(ok_logp),
                               "errors": errors}
    if not groups:
        overall["error"] = (f"no question group has ≥ {mi.min_contexts} contexts; raise task.size "
                            "or lower mi.min_contexts")
    elif errors:
        overall["error"] = f"{len(errors)} of {len(groups)} group estimates failed: {errors[0]}"
    else:
        est = estimate_mi_groups(ok_logp, n_boot=mi.n_boot, seed=cfg.seed, scorer_is_sampler=toks == {"exact-ids"},
                                 plain_sampling=plain)
        mean_tok = float(np.concatenate([t.ravel() for t in ok_tokens]).mean())
        bpt = bits_per_token(est.bits, mean_tok)
        overall.update({
            "bits": est.bits, "ci": list(est.ci), "upper_bits": est.upper_bits, "upper_is_bound": est.upper_is_bound,
            "population_ci": list(est.ci), "mc_se_bits": est.mc_se_bits,
            "mc_ci": list(est.mc_ci) if est.mc_ci is not None else None,
            "context_bits": {k: v for t in ctx_terms for k, v in t["context_bits"].items()},
            "context_var_bits": {k: v for t in ctx_terms for k, v in t["context_var_bits"].items()},
            "saturated_fraction": est.saturated_fraction, "n_contexts": sum(len(x) for x in ok_logp),
            "mean_tokens": mean_tok, "rate_bits": est.bits, "bits_per_token": bpt,
            "bits_per_token_is_lower_bound": est.saturated_fraction >= 0.5,
            "tokenization": "+".join(sorted(toks)),
            "forwarded_tokens": fwd, "lower_bound_tokens": lower,
            "forwarded_ratio": (fwd / lower) if lower else None, "error": None})
        if deterministic:  # weighted as the estimate is (terms per group: N_g · 1)
            overall["deterministic_bits"] = sum(b * n for b, n in det_bits) / sum(n for _, n in det_bits)
    writer.mi(overall)
    return overall
