"""One sample's research episode in one cell (an arm, with its compressor), as a generator: it yields the model
calls it needs (`Call`s, all of one role) and receives their `Generation`s, so a driver can batch the calls of many
episodes per model (`harness.research.driver`). Every step goes to the trace as it finishes; on a resumed run the
steps already stored are read back, in order, instead of being asked again (`Trace`).

The arms: `compressor-predictor` (plan → per subquery search + compressor summary → answer from the summaries, with
up to `rounds` rounds of follow-up subqueries), `predictor-only` (the same, the predictor reading the raw top-k
passages instead of summaries), `no-retrieval` (the question alone) and `oracle-evidence` (the gold passages).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from harness.records import Generation, GenParams, GenRequest, Sample, Usage
from harness.research.protocol import (
    COMPRESS,
    FOLLOW_UP,
    FOLLOW_UP_TOOLS,
    PLAN,
    PLAN_TOOLS,
    PlanError,
    Subquery,
    parse_plan,
    plan_tool,
    tool_arguments,
)
from harness.research.search import Hit, SearchTool, passages_text


@dataclass(frozen=True)
class Call:
    """One model call an episode needs: `role` is the driver's model key ("predictor", "compressor:<spec>")."""

    role: str
    request: GenRequest


@dataclass
class Outcome:
    """How an episode ended: the answer (its final call), or the error and the stage it failed in."""

    answer: Generation | None = None
    answer_request: GenRequest | None = None
    error: str | None = None
    error_stage: str | None = None
    findings: str = ""
    rounds: int = 0
    early_stop: bool = False
    subqueries: int = 0
    truncated: bool = False


Episode = Generator[list[Call], list[Generation], Outcome]


@dataclass
class Trace:
    """The steps of one episode: `stored` (step → row, read from the store when resuming) are reused in order;
    new steps go to `sink` as each finishes. `steps` holds every step of the episode, reused or new."""

    cell_id: str
    sample_id: str
    stored: dict[int, dict[str, Any]] = field(default_factory=dict)
    sink: Callable[[dict[str, Any]], None] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    reused: int = 0
    n: int = 0

    def peek(self, kind: str, offset: int = 0) -> dict[str, Any] | None:
        """The stored error-free step at position n + offset when it is of `kind` (else None: it must be computed)."""
        st = self.stored.get(self.n + offset)
        return st if st is not None and st["kind"] == kind and not st.get("error") else None

    def calls(self, kind: str, role: str, reqs: list[GenRequest]) -> Generator[list[Call], list[Generation],
                                                                              list[tuple[Generation, bool]]]:
        """The generations of `reqs` (steps n, n+1, …): stored ones read back, the rest asked for in one yield.
        Returns (generation, reused) pairs; the caller writes each step with `write` in the same order."""
        out: list[tuple[Generation, bool] | None] = [None] * len(reqs)
        todo = []
        for i, _ in enumerate(reqs):
            st = self.peek(kind, i)
            if st is None:
                todo.append(i)
                continue
            p = st["payload"]
            u = Usage(int(st["prompt_tokens"]), int(st["completion_tokens"]), float(st["seconds"]),
                      bool(p.get("cached", False)))
            out[i] = (Generation(str(p.get("text", "")), [], None, u, finish_reason=str(p.get("finish_reason", "")),
                                 tool_calls=p.get("tool_calls")), True)
        if todo:
            gens = yield [Call(role, reqs[i]) for i in todo]
            for i, g in zip(todo, gens, strict=True):
                out[i] = (g, False)
        return [x for x in out if x is not None]

    def write(self, kind: str, payload: dict[str, Any], *, round: int = 0, role: str = "",
              usage: Usage | None = None, cost: dict[str, Any] | None = None, error: str | None = None,
              reused: bool = False) -> dict[str, Any]:
        """Step n: the stored row when `reused`, else a new row sent to the sink. Returns the step."""
        if reused:
            st = self.stored[self.n]
            self.reused += 1
        else:
            u = usage or Usage()
            st = {"cell_id": self.cell_id, "sample_id": self.sample_id, "step": self.n, "round": round, "kind": kind,
                  "role": role, "payload": {**payload, "cached": bool(u.cached)} if usage is not None else payload,
                  "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                  "seconds": u.seconds, "flops": (cost or {}).get("flops"), "dollars": (cost or {}).get("dollars"),
                  "error": error}
            if self.sink is not None:
                self.sink(st)
        self.steps.append(st)
        self.n += 1
        return st


@dataclass
class Context:
    """What an episode needs besides its sample: the arm, the search tool, prompts and limits, and helpers
    supplied by the runner (`fit`: a request fitted to a role's window; `cost`: FLOPs and dollars of a call)."""

    arm: str
    search: SearchTool | None
    prompts: Any  # harness.config.Prompts (answer prompts)
    top_k: int
    max_subqueries: int
    rounds: int
    plan_params: GenParams
    answer_params: GenParams
    compress_params: GenParams
    compressor: str = ""  # the driver's key of this cell's compressor ("compressor:<spec>")
    protocol: str = "json"  # planning replies: "json" (text) or "tools" (a call of PLAN_TOOL, openai/ only)
    fit: Callable[[str, Callable[[str], GenRequest], str], tuple[GenRequest | None, bool, str | None]] = (
        lambda _r, build, text: (build(text), False, None))
    cost: Callable[[str, Usage], dict[str, Any]] = lambda _r, _u: {}


def _gen_payload(g: Generation) -> dict[str, Any]:
    d: dict[str, Any] = {"text": g.text, "finish_reason": g.finish_reason}
    return d if g.tool_calls is None else {**d, "tool_calls": g.tool_calls}


def findings_text(findings: list[dict[str, Any]]) -> str:
    """The compressors' summaries as the predictor reads them: one block per subquery."""
    return "\n\n".join(f"Search: {f['query']}\nSummary: {f['summary'].strip()}" for f in findings)


def episode(ctx: Context, sample: Sample, tr: Trace) -> Episode:
    """Run one sample's episode in `ctx.arm`; see the module docstring. Never raises for a model's failure: a
    failed call or an unparseable plan ends the episode with `Outcome.error` (and a trace step with the error)."""
    from harness.prompts import arm_messages, render

    out = Outcome()
    pred = "predictor"

    def step_call(kind: str, role: str, req: GenRequest, payload: dict[str, Any], rnd: int) -> Generator[
            list[Call], list[Generation], tuple[Generation, dict[str, Any]]]:
        [(g, reused)] = yield from tr.calls(kind, role, [req])
        st = tr.write(kind, {**payload, **_gen_payload(g)}, round=rnd, role=role, usage=g.usage,
                      cost=ctx.cost(role, g.usage), error=g.error, reused=reused)
        return g, st

    def answer(text: str, key: str, prompt: Any, reads: str, rnd: int) -> Episode:
        req, trunc, err = ctx.fit(pred, lambda t: GenRequest.chat(arm_messages(prompt, key, sample, t),
                                                                  ctx.answer_params), text)
        if err or req is None:
            tr.write("answer", {"reads": reads, "text": ""}, round=rnd, role=pred, error=err)
            out.error, out.error_stage = err, "predict"
            return out
        out.truncated = out.truncated or trunc
        g, _ = yield from step_call("answer", pred, req, {"reads": reads, "truncated": trunc}, rnd)
        out.answer, out.answer_request = g, req
        if g.error:
            out.error, out.error_stage = g.error, "predict"
        return out

    if ctx.arm == "no-retrieval":
        return (yield from answer("", "", ctx.prompts.no_context, "question only", 0))
    if ctx.arm == "oracle-evidence":
        gold = sample.gold_context()
        if not gold:
            tr.write("answer", {"reads": "gold passages", "text": ""}, role=pred, error="no gold passages")
            out.error, out.error_stage = "oracle-evidence: the sample marks no gold passages", "predict"
            return out
        out.findings = gold
        return (yield from answer(gold, "context", ctx.prompts.full_context, "gold passages", 0))

    assert ctx.search is not None
    findings: list[dict[str, Any]] = []  # compressor-predictor: {query, subtask, ids, summary}
    passages: dict[str, Hit] = {}  # predictor-only: every retrieved passage, in order of first retrieval
    seen: set[str] = set()
    tools = ctx.protocol == "tools"
    for rnd in range(ctx.rounds):
        if rnd == 0:
            kind = "plan"
            msgs = render(PLAN_TOOLS if tools else PLAN, question=sample.question, n=str(ctx.max_subqueries))
        else:
            kind = "follow-up"
            so_far = findings_text(findings) if ctx.arm == "compressor-predictor" else passages_text(
                list(passages.values()))
            msgs = render(FOLLOW_UP_TOOLS if tools else FOLLOW_UP, question=sample.question,
                          findings=so_far or "(none)", n=str(ctx.max_subqueries))
        req = GenRequest.chat(msgs, ctx.plan_params)
        if tools:
            req = GenRequest(req.messages, req.prompt, req.params, tool=plan_tool(ctx.max_subqueries))
        [(g, reused)] = yield from tr.calls(kind, pred, [req])
        base = {"protocol": ctx.protocol, **_gen_payload(g)}
        cost = ctx.cost(pred, g.usage)
        if g.error:
            tr.write(kind, base, round=rnd, role=pred, usage=g.usage, cost=cost, error=g.error, reused=reused)
            out.error, out.error_stage = f"{kind}: {g.error}", "predict"
            return out
        try:
            plan = parse_plan(tool_arguments(g.tool_calls) if tools else g.text, ctx.max_subqueries,
                              allow_done=rnd > 0)
        except PlanError as e:
            err = f"planning failure ({kind}, round {rnd}): {e}"
            tr.write(kind, base, round=rnd, role=pred, usage=g.usage, cost=cost, error=err, reused=reused)
            out.error, out.error_stage = err, "predict"
            return out
        new = [sq for sq in plan.subqueries if sq.query.lower() not in seen]
        tr.write(kind, {**base, "subqueries": [{"query": s.query, "subtask": s.subtask} for s in plan.subqueries],
                        "done": plan.done, "dropped": plan.dropped,
                        "repeated": len(plan.subqueries) - len(new), "early_stop": plan.done or not new},
                 round=rnd, role=pred, usage=g.usage, cost=cost, reused=reused)
        if plan.done or not new:
            out.early_stop = True
            break
        out.rounds = rnd + 1
        out.subqueries += len(new)
        seen.update(sq.query.lower() for sq in new)
        hits_per: list[tuple[Subquery, list[Hit]]] = []
        for sq in new:
            st = tr.peek("search")
            if st is not None:
                hits = [ctx.search.hit(i, r, s) for r, (i, s) in
                        enumerate(zip(st["payload"]["ids"], st["payload"]["scores"], strict=True), 1)]
                tr.write("search", {}, reused=True)
            else:
                import time

                t0 = time.perf_counter()
                hits = ctx.search.search(sq.query, ctx.top_k)
                tr.write("search", {"query": sq.query, "k": ctx.top_k, "ids": [h.id for h in hits],
                                    "scores": [h.score for h in hits], "titles": [h.title for h in hits]},
                         round=rnd, role="tool", usage=Usage(seconds=time.perf_counter() - t0))
            hits_per.append((sq, hits))
        if ctx.arm == "predictor-only":
            for _, hits in hits_per:
                for h in hits:
                    passages.setdefault(h.id, h)
            continue
        reqs, ok = [], []
        for sq, hits in hits_per:
            r, trunc, err = ctx.fit(ctx.compressor, lambda t, sq=sq: GenRequest.chat(
                render(COMPRESS, subtask=sq.subtask, passages=t), ctx.compress_params), passages_text(hits))
            if err or r is None:
                out.error, out.error_stage = f"compress: {err}", "compress"
                tr.write("compress", {"query": sq.query, "subtask": sq.subtask, "ids": [h.id for h in hits],
                                      "text": ""}, round=rnd, role=ctx.compressor, error=err)
                return out
            out.truncated = out.truncated or trunc
            reqs.append(r)
            ok.append(trunc)
        results = yield from tr.calls("compress", ctx.compressor, reqs)
        for (sq, hits), (g, reused), trunc in zip(hits_per, results, ok, strict=True):
            tr.write("compress", {"query": sq.query, "subtask": sq.subtask, "ids": [h.id for h in hits],
                                  "truncated": trunc, **_gen_payload(g)},
                     round=rnd, role=ctx.compressor, usage=g.usage, cost=ctx.cost(ctx.compressor, g.usage),
                     error=g.error, reused=reused)
            if g.error:
                out.error, out.error_stage = f"compress: {g.error}", "compress"
                return out
            findings.append({"query": sq.query, "subtask": sq.subtask, "ids": [h.id for h in hits], "summary": g.text})
    if ctx.arm == "predictor-only":
        out.findings = passages_text(list(passages.values()))
        return (yield from answer(out.findings, "context", ctx.prompts.full_context, "raw passages", out.rounds))
    out.findings = findings_text(findings)
    return (yield from answer(out.findings or "(nothing found)", "summary", ctx.prompts.predictor, "summaries",
                              out.rounds))
