"""`harness tune-filter CONFIG`: tune RAG filters' knobs on a dev split, evaluate the chosen settings on test.

The config is a sweep config whose `sweep.compressors` are `filter/<kind>` entries; an option given as a list of
values (other than the list-typed `budgets` and `train_ids`) is a grid, one setting per value:

    sweep:
      compressors:
        - {model: filter/truncate, options: {tokens: [64, 128, 256]}}
        - {model: filter/extractive, options: {sentences: [1, 2, 4]}}
        - {model: filter/ib-oracle, options: {beta: [1, 10]}}       # reference: it reads the gold answer
        - {model: filter/ib-learned, options: {}}                    # train_ids: the dev split, filled in here
      predictors: [gguf/qwen2.5-coder-0.5b]
      tasks: [...]

Per task (`sweep.tasks`, else `task`):

1. split the task's samples into dev and test (`harness.analyze.tune.split_dev_test`: seeded, disjoint, whole
   question groups on one side);
2. run every setting on dev through the sweep engine (`harness.pipeline.sweep.Sweep`, name `<name>-<task>-dev`,
   restricted to the dev samples): resumable, each compression made once and stored with its IB terms;
3. read each setting's dev accuracy (Wilson CI), compression rate and mean IB terms back from the store, mark the
   Pareto front of accuracy against rate, and pick, per filter kind and overall, the setting that maximises the
   objective (`harness.analyze.tune.choose`, dev numbers only; the ib-oracle is a reference, never chosen);
4. run the chosen settings (and the oracle's, for reference) once on test (`<name>-<task>-test`), which the choice
   never read; write the Pareto plot of dev (PNG, SVG, PDF) beside the run folder.

An LM compressor entry (gguf/..., hf/..., openai/...) is the abstractive filter (kind `abstractive`, label e.g.
`abstractive smollm2-135m {max_words: 30}`): `options: {max_words: N}` appends "Use at most N words." to its prompt
(a grid like any option), and tune-filter sets `ib_terms: true` so its compressions get their IB terms from
`models.scorer`, as every filter's.

`filter/ib-learned` trains on the ib-oracle's choices on the dev samples (its `train_ids`), with the same
beta/budgets as the first ib-oracle setting unless it sets its own; the summary gives its training time and its
held-out agreement with the oracle on test (share of test samples where both keep the same text).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from typing import Any

from harness.config import LM_BACKENDS, ModelConfig, RunConfig, parse_sweep_config
from harness.errors import UserError

LIST_OPTIONS = ("budgets", "train_ids")  # options whose value is a list by type, not a grid


def expand_settings(entries: list[Any]) -> list[dict[str, Any]]:
    """Each compressor entry (a spec string or a role mapping) as role mappings, one per grid point of its
    list-valued options (pure)."""
    out: list[dict[str, Any]] = []
    for e in entries:
        d = e.model_dump(mode="json", exclude_defaults=True) if isinstance(e, ModelConfig) else (
            {"model": e} if isinstance(e, str) else dict(e))
        opts = dict(d.get("options") or {})
        grid = {k: v for k, v in opts.items() if isinstance(v, list) and k not in LIST_OPTIONS}
        keys = sorted(grid)
        for vals in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
            o = {**opts, **dict(zip(keys, vals, strict=True))}
            out.append({**d, "options": o} if o else {k: v for k, v in d.items() if k != "options"})
    return out


def setting_kind(d: dict[str, Any]) -> str:
    """A setting's filter kind: `truncate` for filter/truncate, `abstractive` for an LM compressor."""
    backend, _, name = d["model"].partition("/")
    return "abstractive" if backend in LM_BACKENDS else name


def setting_label(d: dict[str, Any]) -> str:
    """`truncate {tokens: 64}`, `abstractive smollm2-135m {max_words: 30}` (train_ids and ib_terms left out)."""
    kind = setting_kind(d)
    if kind == "abstractive":
        kind += " " + d["model"].partition("/")[2]
    o = {k: v for k, v in (d.get("options") or {}).items() if k not in ("train_ids", "ib_terms")}
    return kind + (" {" + ", ".join(f"{k}: {v}" for k, v in sorted(o.items())) + "}" if o else "")


def dev_compressors(settings: list[dict[str, Any]], dev: list[str]) -> list[dict[str, Any]]:
    """The settings the dev sweep runs (pure, copies): each `filter/ib-learned` trains on the `dev` ids and takes
    the first ib-oracle setting's beta/budgets/max_single/by where it sets none of its own, so an ib-learned grid
    `beta: [1, 10]` stays one setting per beta, each trained on the oracle's labels at its beta. Settings that
    come out equal are run once."""
    oracle = next((s for s in settings if s["model"] == "filter/ib-oracle"), None)
    comps = []
    for s in settings:
        s = copy.deepcopy(s)
        if s["model"] == "filter/ib-learned":
            o = s.setdefault("options", {})
            for k in ("beta", "budgets", "max_single", "by"):
                if oracle is not None and k not in o and k in (oracle.get("options") or {}):
                    o[k] = copy.deepcopy(oracle["options"][k])
            o["train_ids"] = list(dev)
        if setting_kind(s) == "abstractive":  # an LM's compressions get their IB terms, as every filter's
            s["options"] = {"ib_terms": True, **(s.get("options") or {})}
        if s not in comps:  # a plain ib-learned filled in as one of its own beta grid is that setting, once
            comps.append(s)
    return comps


def _sub_config(cfg: RunConfig, task: Any, name: str, comps: list[dict[str, Any]]) -> RunConfig:
    d = cfg.model_dump(mode="json")
    d["name"] = name
    d["task"] = task.model_dump(mode="json")
    d["sweep"] = {**d["sweep"], "tasks": [], "compressors": comps, "knobs": {}}
    d["output"]["dir"] = str(cfg.output_dir())  # one run folder for the whole tuning
    return parse_sweep_config(d, f"tune-filter ({name})")


def _run_split(rc: RunConfig, ids: set[str], quiet: bool
               ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, str]]:
    """Run the sweep `rc` on the samples with these ids; (run summary, cell id -> its compressor role mapping,
    cell id -> the key of its ib-learned filter's artefact, read from the compressor the sweep runs)."""
    from harness.pipeline.sweep import Sweep

    sw = Sweep(rc, quiet=quiet)
    try:
        for c in sw.plan.cells.values():  # the setting's label, stored in the cell's knobs (the report's labels)
            if c.arm == "compressed" and c.cfg.models.compressor is not None:
                c.knobs = {**c.knobs, "filter": setting_label(c.cfg.models.compressor.model_dump(mode="json"))}
        for attr in ("samples", "task_samples"):
            table = getattr(sw, attr)
            for k in table:
                table[k] = [s for s in table[k] if s.id in ids]
        learned = {cid: sw._backend(c.cfg.models.compressor, "sweep.compressors").learner.key
                   for cid, c in sw.plan.cells.items() if c.arm == "compressed" and c.cfg.models.compressor is not None
                   and c.cfg.models.compressor.model == "filter/ib-learned"}
        summary = sw.run()
        cells = {cid: c.cfg.models.compressor.model_dump(mode="json") for cid, c in sw.plan.cells.items()
                 if c.arm == "compressed" and c.cfg.models.compressor is not None}
    finally:
        sw.close()
    return summary, cells, learned


def rescore_cells(store_url: str, cells: list[str], metric: str) -> None:
    """Score the cells' stored predictions with `metric` (a `harness.analyze.rescore.METRICS` name), stored under
    that name, so `cell_frame(..., metric=metric)` counts them; no model call, nothing for `auto` (the run's own
    scores), and a rerun adds no rows (a stored row is never rewritten)."""
    from harness.analyze.rescore import rescore

    if metric != "auto" and cells:
        rescore(store_url, metric, store_as=metric, cells=cells)


def _numbers(store_url: str, run_id: str, cells: dict[str, dict[str, Any]], task: str, ids: set[str],
             metric: str = "auto") -> dict[str, dict[str, Any]]:
    """Per cell: accuracy (by `metric`, after `rescore_cells`) with its CI, n, compression rate and the mean IB
    terms of its compressions on `ids`."""
    from harness.analyze.frames import cell_frame
    from harness.analyze.tune import TERM_COLUMNS
    from harness.results import load

    rescore_cells(store_url, list(cells), metric)
    frames = load(store_url)
    cf = cell_frame(frames, run_id, metric=None if metric == "auto" else metric)[0].set_index("cell_id")
    comps = frames["compressions"]
    preds = frames["predictions"]
    terms = frames["compression_terms"]
    wide = terms.pivot_table(index="compression_id", columns="name", values="value", aggfunc="first") \
        if not terms.empty else None
    out = {}
    for cid in cells:
        if cid not in cf.index:
            continue
        r = cf.loc[cid]
        row: dict[str, Any] = {k: _num(r[k]) for k in ("accuracy", "acc_lo", "acc_hi", "n", "errors", "token_ratio")}
        read = preds.loc[preds["cell_id"] == cid, "compression_id"].dropna().astype(int)  # what its predictor read
        mine = comps[comps["compression_id"].isin(read) & (comps["task"] == task) & comps["sample_id"].isin(ids)
                     & comps["error"].isna()]
        if wide is not None:
            w = wide[wide.index.isin(mine["compression_id"])]
            for c in TERM_COLUMNS:
                row[c] = _num(w[c].mean()) if c in w and w[c].notna().any() else None
        row["rate"] = row.get("compression_rate") if row.get("compression_rate") is not None else row["token_ratio"]
        row["texts"] = dict(zip(mine["sample_id"], mine["text"], strict=True))
        out[cid] = row
    return out


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _learned_info(key: str | None) -> dict[str, Any]:
    """The ib-learned artefact (training time, sizes, fit agreement) with this key, from its cache file."""
    from harness.compressors.learned import artefact_dir

    path = artefact_dir() / f"{key}.json"
    if key is None or not path.is_file():
        return {}
    m = json.loads(path.read_text())
    return {k: m.get(k) for k in ("train_seconds", "label_seconds", "fit_seconds", "n_samples", "n_sentences",
                                  "n_kept", "oracle_abstained", "train_sentence_agreement")}


def tune_filter(cfg: RunConfig, *, dev_fraction: float = 0.5, split_seed: int = 0, objective: str = "accuracy",
                max_rate: float | None = None, quiet: bool = False, metric: str = "auto") -> dict[str, Any]:
    """Tune the config's filters per task (see the module docstring); returns the JSON summary. `metric`: a
    `harness.analyze.rescore.METRICS` name every accuracy is read by (`auto`: as the run scored; `contains` for
    short answers, where "In 1987." for gold "1987" is right)."""
    from harness.analyze.rescore import METRICS
    from harness.analyze.tune import choose, pareto_front, pareto_plot, split_dev_test
    from harness.preflight import load_samples

    if metric not in METRICS:
        raise UserError(f"--metric {metric}: unknown; choose one of {', '.join(METRICS)}")

    if cfg.sweep is None:
        raise UserError("tune-filter needs a sweep config: list the filter settings under sweep.compressors")
    if not cfg.output.store:
        raise UserError("output.store: tune-filter keeps every setting's numbers in a results store; set one")
    settings = expand_settings(list(cfg.sweep.compressors))
    bad = [s["model"] for s in settings if str(s["model"]).partition("/")[0] not in ("filter", *LM_BACKENDS)]
    if bad:
        raise UserError(f"sweep.compressors: tune-filter tunes filter/<kind> and LM (abstractive) compressors; "
                        f"'{bad[0]}' is neither")
    folder = cfg.output_dir()
    folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"name": cfg.name, "objective": objective, "max_rate": max_rate, "metric": metric,
                              "dev_fraction": dev_fraction, "split_seed": split_seed, "tasks": {}}
    for task in cfg.sweep.tasks or [cfg.task]:
        samples = load_samples(task)
        dev, test = split_dev_test([s.id for s in samples], [s.group_id or s.id for s in samples], dev_fraction,
                                   split_seed)
        comps = dev_compressors(settings, dev)
        base = f"{cfg.name}-{task.name}"
        dcfg = _sub_config(cfg, task, f"{base}-dev", comps)
        dsum, dcells, dlearned = _run_split(dcfg, set(dev), quiet)
        dnum = _numbers(cfg.output.store, dsum["run_id"], dcells, task.name, set(dev), metric)
        rows = []
        for cid, comp in dcells.items():
            n = dnum.get(cid, {})
            rows.append({"cell_id": cid, "setting": setting_label(comp), "kind": setting_kind(comp),
                         "compressor": comp, **{k: v for k, v in n.items() if k != "texts"}})
        rows.sort(key=lambda r: (r["kind"], r["setting"]))
        cand = [r for r in rows if r["kind"] != "ib-oracle"]
        front = pareto_front([r.get("rate") if r.get("rate") is not None else math.nan for r in cand],
                             [r.get("accuracy") if r.get("accuracy") is not None else math.nan for r in cand])
        for r, f in zip(cand, front, strict=True):
            r["pareto"] = bool(f)
        chosen: dict[str, dict[str, Any]] = {}
        for kind in sorted({r["kind"] for r in rows}):
            group = [r for r in rows if r["kind"] == kind]
            i = choose(group, objective, max_rate if kind != "ib-oracle" else None)
            if i is not None:
                chosen[kind] = group[i]
        k_all = choose(cand, objective, max_rate)
        best = cand[k_all]["setting"] if k_all is not None else None
        # test: each kind's chosen setting once (the oracle's as reference), on samples the choice never read
        tcomps = [r["compressor"] for r in chosen.values()]
        tsum, tcells, tnum = {"run_id": None}, {}, {}
        if tcomps and test:
            tsum, tcells, _ = _run_split(_sub_config(cfg, task, f"{base}-test", tcomps), set(test), quiet)
            tnum = _numbers(cfg.output.store, tsum["run_id"], tcells, task.name, set(test), metric)
        test_rows = {}
        for cid, comp in tcells.items():
            n = tnum.get(cid, {})
            test_rows[setting_label(comp)] = {"cell_id": cid, **{k: v for k, v in n.items() if k != "texts"}}
        learned = {}
        if "ib-learned" in chosen and "ib-oracle" in chosen:
            lt = next((tnum[c]["texts"] for c, m in tcells.items() if m["model"] == "filter/ib-learned"), {})
            ot = next((tnum[c]["texts"] for c, m in tcells.items() if m["model"] == "filter/ib-oracle"), {})
            both = sorted(set(lt) & set(ot))
            learned = {"test_agreement": sum(lt[i] == ot[i] for i in both) / len(both) if both else None,
                       "test_abstain_agreement": (sum((lt[i] == "") == (ot[i] == "") for i in both) / len(both)
                                                  if both else None), "n_test": len(both),
                       **_learned_info(dlearned.get(chosen["ib-learned"]["cell_id"]))}
        plot = pareto_plot(folder / f"pareto-{task.name}",
                           [r.get("rate") or 0.0 for r in cand], [r.get("accuracy") or 0.0 for r in cand],
                           [r["setting"] for r in cand], f"{task.name}: dev ({len(dev)} samples, metric {metric})",
                           reference=[(r["rate"], r["accuracy"]) for r in rows if r["kind"] == "ib-oracle"
                                      and r.get("rate") is not None and r.get("accuracy") is not None])
        result["tasks"][task.name] = {
            "dev_ids": dev, "test_ids": test, "dev": rows, "best": best,
            "chosen": {k: r["setting"] for k, r in chosen.items()}, "test": test_rows, "ib_learned": learned,
            "plots": [str(p) for p in plot], "dev_run": dsum["run_id"], "test_run": tsum["run_id"],
        }
    (folder / "tune-filter.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def _f(x: Any, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def format_summary(res: dict[str, Any]) -> str:
    """The printed tables: dev settings with the Pareto front, then the chosen settings on test."""
    from harness.analyze.render import md_table

    L = []
    for task, t in res["tasks"].items():
        lim = f", rate <= {res['max_rate']}" if res["max_rate"] is not None else ""
        L.append(f"## {task}: dev {len(t['dev_ids'])} samples, test {len(t['test_ids'])} (metric "
                 f"{res.get('metric', 'auto')}, objective {res['objective']}{lim})")
        L.append("")
        L.append(md_table(["setting (dev)", "accuracy [95% CI]", "rate", "ib_score", "support P/R", "front",
                           "chosen"],
                          [[r["setting"], f"{_f(r.get('accuracy'))} [{_f(r.get('acc_lo'))}, {_f(r.get('acc_hi'))}]",
                            _f(r.get("rate")), _f(r.get("ib_score"), 2),
                            f"{_f(r.get('support_precision'))}/{_f(r.get('support_recall'))}",
                            "*" if r.get("pareto") else ("ref" if r["kind"] == "ib-oracle" else ""),
                            "best" if r["setting"] == t["best"] else
                            ("yes" if t["chosen"].get(r["kind"]) == r["setting"] else "")] for r in t["dev"]]))
        L.append("")
        L.append(md_table(["setting (test)", "n", "accuracy [95% CI]", "rate", "ib_score", "support P/R"],
                          [[s, _f(r.get("n"), 0), f"{_f(r.get('accuracy'))} [{_f(r.get('acc_lo'))}, "
                            f"{_f(r.get('acc_hi'))}]", _f(r.get("rate")), _f(r.get("ib_score"), 2),
                            f"{_f(r.get('support_precision'))}/{_f(r.get('support_recall'))}"]
                           for s, r in t["test"].items()]))
        lr = t.get("ib_learned") or {}
        if lr:
            L.append("")
            L.append(f"ib-learned: trained in {_f(lr.get('train_seconds'), 1)} s on {lr.get('n_samples')} dev samples "
                     f"({lr.get('n_sentences')} sentences, {lr.get('n_kept')} kept by the oracle); held-out agreement "
                     f"with ib-oracle on test: {_f(lr.get('test_agreement'))} (abstain agreement "
                     f"{_f(lr.get('test_abstain_agreement'))}, n = {lr.get('n_test')})")
        L.append(f"plot: {t['plots'][0] if t['plots'] else '-'}")
        L.append("")
    return "\n".join(L)
