"""The `harness` command: run, sweep, report, compare, models, tasks, configs."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import yaml

from harness.console import markdown_tables_as_text
from harness.errors import UserError


def _parse_set(items: list[str]) -> dict[str, Any]:
    """`--set a.b=1` → {"a": {"b": 1}} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or not key:
            raise UserError(f"--set {it}: write KEY=VALUE, e.g. --set task.size=4")
        cur = out
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = yaml.safe_load(val)
    return out


def dtype_line(identities: dict[str, dict]) -> str:
    """`# dtype: compressor float32, predictor float32 (HARNESS_DTYPE unset; CPU bf16 units: yes)`."""
    import os

    from harness.backends.transformers import DTYPE_ENV, cpu_has_fast_bf16

    roles = ", ".join(f"{role} {ident.get('dtype')}" for role, ident in identities.items() if ident.get("dtype"))
    forced = os.environ.get(DTYPE_ENV) or "unset"
    return f"# dtype: {roles or '-'} ({DTYPE_ENV} {forced}; CPU bf16 units: {'yes' if cpu_has_fast_bf16() else 'no'})"


def cmd_run(args: argparse.Namespace) -> int:
    from harness.config import load_config
    from harness.pipeline.run import format_table, run

    cfg = load_config(args.config, _parse_set(args.set))
    if cfg.sweep is not None:
        raise UserError(f"{args.config} has a 'sweep' section; run it with `harness sweep {args.config}`")
    if cfg.research is not None:  # Deep-Research mode (harness.research)
        from harness.research.run import run_research

        rs = run_research(cfg, quiet=args.quiet)
        print(f"# {rs['name']}: research, task {rs['task']}, {rs['n_samples']} samples, {rs['wall_seconds']:.0f} s, "
              f"model loads {rs['model_loads']}, model calls {rs['model_calls']}, episodes {rs['episodes']} "
              f"(skipped as done {rs['skipped']}, steps reused {rs['reused_steps']})")
        print(rs["table"], end="")
        print(f"results: {rs['run_dir']}")
        if rs["rows"] and all(not r["scored"] and r["errors"] for r in rs["rows"]):
            return _nothing_succeeded("every research episode failed", None)
        return 0
    from harness.progress import run_progress

    with run_progress(planned_run_stages(cfg)):
        summary = run(cfg, quiet=args.quiet)
    print(
        f"# {summary['name']}: task {summary['task']}, {summary['n_samples']} samples, "
        f"{summary['wall_seconds']:.0f} s, model loads {summary['model_loads']}, model calls {summary['model_calls']}"
    )
    print(dtype_line(summary.get("identities", {})))
    print(markdown_tables_as_text(format_table(summary)))  # table.md in the run folder keeps the markdown
    print(f"results: {cfg.output_dir()}")
    rows = summary["rows"]
    if not any(r["scored"] for r in rows) and any(r["errors"] for r in rows):
        n = sum(r["errors"] for r in rows)
        return _nothing_succeeded(f"all {n} rows are errors", summary.get("first_error"))
    return 0


def planned_run_stages(cfg: Any) -> int:
    """How many stages (progress bars) `harness run` opens for `cfg`: compress, MI by the compressor itself, MI
    by the scorer model, and predict once per arm (a cell each); judge stages, when a task needs them, are counted
    as they open."""
    mi = cfg.mi
    compress = "compressed" in cfg.arms or mi is not None
    n = int(compress) + len(cfg.arms)
    if compress and mi is not None:
        n += int("self" in mi.scorers) + int("scorer" in mi.scorers and cfg.models.scorer is not None)
    return n


def _nothing_succeeded(what: str, first_error: str | None) -> int:
    """Say loudly that no call succeeded (a wrong base_url, a dead server, a bad key) and exit 1."""
    from harness.store.redact import redact_text

    first = redact_text(" ".join(str(first_error).split())[:300]) if first_error else "-"
    print(f"error: nothing succeeded: {what} (first: {first}); check the models' base_url, the server and the "
          "API key, then rerun", file=sys.stderr)
    return 1


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.config import load_sweep_config
    from harness.pipeline.sweep import run_sweep

    cfg = load_sweep_config(args.config, _parse_set(args.set))
    if args.dry_run:  # the plan, no model loaded and nothing written
        import json

        from harness.pipeline.plan import dry_run, format_dry_run

        d = dry_run(cfg, retry_errors=args.retry_errors)
        print(json.dumps(d, indent=2, default=str) if args.json else format_dry_run(d), end="\n" if args.json else "")
        return 0
    from harness.progress import run_progress

    with run_progress(None):  # the stages a sweep runs depend on the leases it wins: "stage k", no n
        out = run_sweep(cfg, retry_errors=args.retry_errors, quiet=args.quiet)
    new = ", ".join(f"{k} {v}" for k, v in sorted(out["new_rows"].items())) or "none"
    print(
        f"# sweep {out['name']}: {out['cells']} cells, {out['wall_seconds']:.0f} s, model loads {out['model_loads']}, "
        f"generate requests {out['generate_requests']}, score requests {out['score_requests']}; new rows: {new}"
    )
    print(markdown_tables_as_text(out["table"]))
    print(f"store: {out['store']}  (harness report {out['store']})")
    pred = out.get("predictions") or {}
    if pred.get("total") and pred["errors"] == pred["total"]:
        return _nothing_succeeded(f"all {pred['total']} predictions are errors", pred.get("first_error"))
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from harness.backends import packs
    from harness.console import print_table

    rows = packs.list_packs()
    yes = {True: "yes", False: "no"}
    print_table(["alias", "params", "MB", "instruct", "present", "safetensors", "path"],
                [[r["alias"], r["params"], r["size_mb"], str(r["instruct"]), yes[bool(r["present"])],
                  yes[bool(r["safetensors"])], r["path"]] for r in rows], numeric=("params", "MB"), no_wrap=("alias",))
    print(f"cache: {packs.cache_dir()}  (set HARNESS_CACHE to move it)")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from harness.backends import packs

    aliases = list(packs.PACKS) if args.alias == ["all"] else args.alias
    for a in aliases:
        packs.get_pack(a)
    for a in aliases:
        packs.fetch(a, safetensors=args.safetensors)
    return 0


def cmd_tune_filter(args: argparse.Namespace) -> int:
    """Tune a config's RAG filters on a dev split and evaluate the chosen settings on test (harness/tune.py)."""
    import json

    from harness.config import load_sweep_config
    from harness.tune import format_summary, tune_filter

    cfg = load_sweep_config(args.config, _parse_set(args.set))
    res = tune_filter(cfg, dev_fraction=args.dev_fraction, split_seed=args.split_seed, objective=args.objective,
                      max_rate=args.max_rate, quiet=args.quiet or args.json, metric=args.metric)
    print(json.dumps(res, indent=1, default=str) if args.json else format_summary(res))
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    """Retrieve the config's task (its `retrieval:` section) and print recall@k; results go to the response cache."""
    import json

    from harness.backends.cache import ResponseCache
    from harness.config import load_config
    from harness.preflight import check_sqlite_file, load_samples
    from harness.retrieval import retrieve_samples

    cfg = load_config(args.config, _parse_set(args.set))
    if cfg.retrieval is None:
        raise UserError(f"{args.config}: no 'retrieval' section; add retrieval: {{corpus: task, retriever: bm25, "
                        "top_k: 5}")
    from harness.retrieval import check_retrieval

    check_retrieval(cfg.retrieval)
    if cfg.output.cache:
        check_sqlite_file(cfg.output.cache, "output.cache", what="response cache")
    samples = load_samples(cfg.task)
    cache = ResponseCache(cfg.output.cache) if cfg.output.cache else None
    _, summary = retrieve_samples(samples, cfg.retrieval, cache)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    r = summary["recall_at_k"]
    print(f"# {cfg.task.name}: {len(samples)} samples, {summary['retriever']} over {summary['passages']} passages "
          f"({summary['corpus']}, {summary['corpora']} corpora), k={summary['k']}; searched {summary['searched']} of "
          f"{summary['queries']} queries "
          "(the rest from the cache)")
    print(f"recall@{summary['k']}: {'n/a (no gold passages)' if r is None else f'{r:.3f}'}"
          f" over {summary['with_gold']} samples with gold passages")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.analyze.report import build_report
    from harness.preflight import check_store_url

    check_store_url(args.store, "store", must_exist=True, write=False)

    rep = build_report(args.store, args.out, run_id=args.run, metric=args.metric)
    print(f"report: {rep.path}  ({len(rep.cells)} cells, {len(rep.plots)} plots as PNG, SVG and PDF)")
    print(f"html:   {rep.html}  (one self-contained file, plots inlined)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.analyze.compare import compare_cells, format_comparison
    from harness.preflight import check_store_url

    check_store_url(args.store, "store", must_exist=True, write=False)

    from harness.console import table_text

    c = compare_cells(args.store, args.cell_a, args.cell_b, metric=args.metric)
    print(format_comparison(c, table=lambda h, rows: table_text(h, rows, numeric=h[1:])))
    if args.show:
        from harness.analyze.compare import format_discordant

        print()
        print(format_discordant(c, args.show, seed=args.seed))
    return 0


def cmd_cells(args: argparse.Namespace) -> int:
    from harness.analyze.cells import cells_table
    from harness.analyze.frames import load_cells
    from harness.console import print_table
    from harness.preflight import check_store_url

    check_store_url(args.store, "store", must_exist=True, write=False)
    cells = load_cells(args.store, run_id=args.run, metric=args.metric)
    if cells.empty:
        print("no cells" + (f" in run {args.run}" if args.run else ""))
        return 0
    headers, rows = cells_table(cells)
    if args.ids:  # one full cell id a line, for scripts
        print("\n".join(r[-1] for r in rows))
        return 0
    print_table(headers, rows, numeric=("n", "errors", "MI bits"), no_wrap=("id",))
    print(f"{len(rows)} cells; any command that takes a cell accepts its id, a unique prefix of it, or the short id")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.preflight import check_store_url
    from harness.results import export

    check_store_url(args.store, "store", must_exist=True, write=False)
    out = Path(args.out) if args.out else Path("results") / f"export-{Path(str(args.store)).stem or 'store'}"
    paths = export(args.store, out, fmt=args.format)
    print(f"exported {len(paths)} tables as {args.format} to {out}")
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    from harness.analyze.cells import short_ids
    from harness.analyze.rescore import rescore, rescore_table
    from harness.console import print_table
    from harness.preflight import check_store_url

    check_store_url(args.store, "store", must_exist=True, write=not args.dry_run)
    r = rescore(args.store, args.metric, store_as=args.store_as, cells=args.cell, dry_run=args.dry_run)
    headers, rows = rescore_table(r, short_ids(c.cell_id for c in r.cells))
    print_table(headers, rows, numeric=headers[3:-1], no_wrap=("id",))
    new, differ = r.total("new"), r.total("differ")
    w2r, r2w = r.total("wrong_to_right"), r.total("right_to_wrong")
    verb = "would add" if args.dry_run else "added"
    print(f"metric {r.metric}: {verb} {new} score rows; {r.total('unchanged')} unchanged; flips against the counted "
          f"verdicts: {w2r} wrong→right, {r2w} right→wrong")
    if differ:
        print(f"note: {differ} stored scores under the same name differ from the rescore and were kept (never "
              "overwritten); store the rescore beside them with --as NAME")
    if r.counted_change:
        short = short_ids(c.cell_id for c in r.cells)
        moved = ", ".join(f"{short[c]} ({was} → {now})" for c, (was, now) in r.counted_change.items())
        print(f"note: the counted metric (the judge's, else the first by name) changed in {moved}; choose it with "
              "--metric in `harness cells` and `harness compare`")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from harness.preflight import check_store_url

    check_store_url(args.store, "store", must_exist=True, write=False)
    try:
        from harness.view import serve
    except ImportError as e:
        raise UserError(f'harness view needs the view extra ({e.name} is missing): pip install "harness[view]"') from e
    serve(args.store, port=args.port, report_dir=args.report, open_browser=not args.no_browser)
    return 0


def cmd_tasks_list(args: argparse.Namespace) -> int:
    import textwrap

    from harness.tasks.base import task_catalog

    def val(v: Any) -> str:
        return yaml.safe_dump(v, default_flow_style=True, width=1000).strip().removesuffix("...").strip()

    for t in task_catalog():
        print(f"{t['name']}  (size {val(t['size'])}, split {val(t['split'])}, seed {val(t['seed'])})")
        print(textwrap.fill(t["description"], 116, initial_indent="    ", subsequent_indent="    "))
        opts = [(f"{o['name']}: {val(o['default'])}", o["help"]) for o in t["options"]]
        width = max((len(o) for o, _ in opts), default=0)
        for o, h in opts:
            print(f"    {o:<{width}}  {h}")
        print()
    print("set them in a config: task: {name: NAME, size: N, options: {OPTION: VALUE}}")
    return 0


def cmd_configs_list(args: argparse.Namespace) -> int:
    from harness.console import print_table
    from harness.resources import config_catalog

    rows = config_catalog()
    print_table(["name", "kind", "task", "description"],
                [[r["name"], r["kind"], r["task"] or "-", r["description"]] for r in rows], no_wrap=("name",))
    print("copy one: harness configs show NAME > my.yaml, then harness run my.yaml (a sweep: harness sweep my.yaml)")
    return 0


def cmd_configs_show(args: argparse.Namespace) -> int:
    from harness.resources import config_text

    sys.stdout.write(config_text(args.name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Evaluate compressor–predictor LLM systems.")
    p.add_argument("--version", action="version", version=_version_text())
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one YAML config")
    r.add_argument("config")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.set_defaults(fn=cmd_run)
    sw = sub.add_parser("sweep", help="run or resume a grid of cells (compressors × predictors × tasks × knobs)")
    sw.add_argument("config")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    sw.add_argument("--retry-errors", action="store_true", help="redo calls whose stored result is an error")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sw.add_argument("--dry-run", action="store_true",
                    help="print the plan (cells, units, requests, FLOPs, dollars; what the store holds is done) "
                         "without loading a model")
    sw.add_argument("--json", action="store_true", help="with --dry-run: print it as JSON")
    sw.set_defaults(fn=cmd_sweep)
    rt = sub.add_parser("retrieve", help="retrieve a config's task (retrieval: section) and print recall@k")
    rt.add_argument("config")
    rt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    rt.add_argument("--json", action="store_true", help="print the summary as JSON")
    rt.set_defaults(fn=cmd_retrieve)
    tf = sub.add_parser("tune-filter", help="tune RAG filters' knobs on a dev split, evaluate the choice on test")
    tf.add_argument("config")
    tf.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    tf.add_argument("--objective", choices=["accuracy", "ib"], default="accuracy",
                    help="accuracy: best dev accuracy (under --max-rate); ib: lowest mean IB score")
    tf.add_argument("--max-rate", type=float, default=None, help="compression rate limit for --objective accuracy")
    tf.add_argument("--metric", default="auto", metavar="NAME",
                    help="score every setting by this `harness rescore` metric (auto: as the run scored; contains: "
                         "lenient, for short answers such as 'In 1987.' for '1987')")
    tf.add_argument("--dev-fraction", type=float, default=0.5, help="share of question groups in dev (default 0.5)")
    tf.add_argument("--split-seed", type=int, default=0, help="seed of the dev/test split")
    tf.add_argument("--json", action="store_true", help="print the summary as JSON")
    tf.add_argument("--quiet", action="store_true", help="no progress bars")
    tf.set_defaults(fn=cmd_tune_filter)
    rp = sub.add_parser("report", help="markdown and self-contained HTML report with plots from a results store")
    rp.add_argument("store", help="results store: a SQLite file or a postgresql:// URL")
    rp.add_argument("--out", default=None, help="output folder (default results/report-<store name>)")
    rp.add_argument("--run", default=None, metavar="RUN_ID", help="only this run's cells")
    rp.add_argument("--metric", default=None, metavar="NAME", help="count this metric's scores where stored "
                    "(e.g. one `harness rescore` or `tune-filter --metric` added; default: the judge's, else the "
                    "first metric by name)")
    rp.set_defaults(fn=cmd_report)
    cp = sub.add_parser("compare", help="paired comparison of two cells of a results store")
    cp.add_argument("store")
    cp.add_argument("cell_a")
    cp.add_argument("cell_b")
    cp.add_argument("--show", type=int, default=0, metavar="N",
                    help="also print N discordant samples (question, both answers, gold, which was right)")
    cp.add_argument("--seed", type=int, default=0, help="seed of the draw of --show samples (default 0)")
    cp.add_argument("--metric", default=None, metavar="NAME", help="count this metric's scores where stored "
                    "(e.g. one `harness rescore` added; default: the judge's, else the first metric by name)")
    cp.set_defaults(fn=cmd_compare)
    ce = sub.add_parser("cells", help="the cells of a results store with short ids (any cell argument takes them)")
    ce.add_argument("store", help="results store: a SQLite file or a postgresql:// URL")
    ce.add_argument("--run", default=None, metavar="RUN_ID", help="only this run's cells")
    ce.add_argument("--ids", action="store_true", help="print only the full cell ids, one a line")
    ce.add_argument("--metric", default=None, metavar="NAME", help="count this metric's scores where stored")
    ce.set_defaults(fn=cmd_cells)
    ex = sub.add_parser("export", help="every results table and the predictions view as Parquet or CSV files")
    ex.add_argument("store", help="results store: a SQLite file or a postgresql:// URL")
    ex.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="file format (default parquet)")
    ex.add_argument("--out", default=None, metavar="DIR", help="output folder (default results/export-<store name>)")
    ex.set_defaults(fn=cmd_export)
    rs = sub.add_parser("rescore", help="score the stored answers again with a new or fixed metric (no model call)")
    rs.add_argument("store", help="results store: a SQLite file or a postgresql:// URL")
    rs.add_argument("--metric", default="auto", help="auto (the task's own metric), exact_match, token_f1, "
                    "numeric_match, mc_accuracy or contains (default auto)")
    rs.add_argument("--as", dest="store_as", default=None, metavar="NAME",
                    help="store the scores under this metric name (default the metric's own name)")
    rs.add_argument("--cell", action="append", default=[], metavar="CELL", help="only this cell (repeatable)")
    rs.add_argument("--dry-run", action="store_true", help="count what would change; write nothing")
    rs.set_defaults(fn=cmd_rescore)
    vw = sub.add_parser("view", help="read-only web viewer of a results store on 127.0.0.1",
                        description="Serve a read-only viewer of STORE (grid, cells, samples, comparisons, plots) on "
                        "127.0.0.1 and print its URL.")
    vw.add_argument("store", help="results store: a SQLite file or a postgresql:// URL")
    vw.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port; default 8765)")
    vw.add_argument("--report", default=None, metavar="DIR", help="folder of the report's plots "
                    "(default results/report-<store name> when present)")
    vw.add_argument("--no-browser", action="store_true", help="only print the URL")
    vw.set_defaults(fn=cmd_view)
    tk = sub.add_parser("tasks", help="the built-in tasks")
    tksub = tk.add_subparsers(dest="tcmd", required=True)
    tksub.add_parser("list", help="every task with its options, defaults and what each does").set_defaults(
        fn=cmd_tasks_list)
    cf = sub.add_parser("configs", help="the example configs shipped with harness")
    cfsub = cf.add_subparsers(dest="ccmd", required=True)
    cfsub.add_parser("list", help="names, kind (run/sweep), task and description").set_defaults(fn=cmd_configs_list)
    cs = cfsub.add_parser("show", help="print one (harness configs show quickstart > my.yaml)")
    cs.add_argument("name")
    cs.set_defaults(fn=cmd_configs_show)
    m = sub.add_parser("models", help="offline model packs")
    msub = m.add_subparsers(dest="mcmd", required=True)
    ml = msub.add_parser("list", help="aliases and whether each is present")
    ml.set_defaults(fn=cmd_models_list)
    mf = msub.add_parser("fetch", help="install, assemble and verify packs (ALIAS ... or all)")
    mf.add_argument("alias", nargs="+")
    mf.add_argument("--safetensors", action="store_true", help="also save a bf16 safetensors copy (fast loads)")
    mf.set_defaults(fn=cmd_models_fetch)
    for sp in (r, sw, rt):
        sp.add_argument("-v", "--verbose", action="store_true",
                        help="show the libraries' warnings and weight-loading bars (hidden by default)")
    _add_examples(p)
    return p


def _version_text() -> str:
    """`harness 0.1.0 (python 3.x)`."""
    import platform

    from harness import __version__

    return f"harness {__version__} (python {platform.python_version()})"


# an example for every subcommand's --help (by its path of names)
EXAMPLES: dict[str, str] = {
    "run": "harness run configs/quickstart.yaml --set task.size=4",
    "sweep": "harness sweep configs/sweep-small.yaml --dry-run",
    "retrieve": "harness retrieve my-rag.yaml --set retrieval.top_k=10",
    "tune-filter": "harness tune-filter my-filter.yaml --objective ib --max-rate 0.3",
    "report": "harness report results/store.db --out results/report",
    "compare": "harness compare results/store.db 3fa9c1 b07e22 --show 5   (short ids from `harness cells`)",
    "view": "harness view results/store.db --port 8765 --no-browser",
    "cells": "harness cells results/store.db --run 20261130-005040-4a5eb7",
    "export": "harness export results/store.db --format csv --out results/csv",
    "rescore": "harness rescore results/store.db --metric contains --dry-run",
    "tasks": "harness tasks list",
    "tasks list": "harness tasks list | less",
    "configs": "harness configs show quickstart > my.yaml",
    "configs list": "harness configs list",
    "configs show": "harness configs show quickstart > my.yaml",
    "models": "harness models fetch smollm2-135m --safetensors",
    "models list": "harness models list",
    "models fetch": "harness models fetch smollm2-135m qwen2.5-coder-0.5b --safetensors",
}


def _add_examples(p: argparse.ArgumentParser, path: str = "") -> None:
    """Put `EXAMPLES[path]` as the epilog of every subcommand (keeping its line breaks)."""
    for action in p._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sp in action.choices.items():
            key = f"{path} {name}".strip()
            if key in EXAMPLES and not sp.epilog:
                sp.epilog = f"example:\n  {EXAMPLES[key]}"
                sp.formatter_class = argparse.RawDescriptionHelpFormatter
            _add_examples(sp, key)


def quiet_libraries(verbose: bool) -> None:
    """Keep transformers' warnings, deprecation notices and weight-loading bars out of a run's output unless
    `verbose` (env vars for libraries not imported yet; their switches for those already imported)."""
    if verbose:
        return
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for cat in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=cat)
    if "transformers" in sys.modules:
        from transformers.utils import logging as tf_logging

        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


_RESUME = {
    "run": "rerun `harness run {config}`: every finished call is answered from the response cache",
    "sweep": "rerun `harness sweep {config}` to resume: finished rows are kept",
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error is one line on stderr and exit 2, Ctrl-C exit 130 with how to resume."""
    from harness.store.redact import redact_text

    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):  # -q: no progress bars, the datasets library's included
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if hasattr(args, "verbose"):  # the commands that load models
        quiet_libraries(args.verbose)
    try:
        return args.fn(args)
    except UserError as e:
        print(f"error: {redact_text(' '.join(str(e).split()))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = _RESUME.get(args.cmd, "").format(config=getattr(args, "config", ""))
        print(f"interrupted (marked interrupted in the results store); {hint}" if hint else "interrupted",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`harness tasks list | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except OSError as e:
        if not e.filename:  # not a file-system error: a bug, show the traceback
            raise
        print(f"error: cannot use '{e.filename}': {e.strerror}; check the paths in the config (output.dir, "
              "output.store, output.cache, task.options.path)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
