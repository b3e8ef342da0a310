"""The planning protocol: prompts for planning, follow-up and per-subquery compression, and the strict JSON parser
of the predictor's replies. An unparseable reply is a planning failure (`PlanError`), never a guess. With
`research.protocol: tools` the predictor is made to call one function tool (`PLAN_TOOL`) instead, and the call's
arguments go through the same parser."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from harness.config import Prompt

PLAN = Prompt(
    system="You plan research for a question. You reply with JSON only.",
    user=(
        "Research question: {question}\n\n"
        "Write up to {n} search queries that find the facts needed to answer it. Each has a \"query\" (the words to "
        "search for) and a \"subtask\" (what to extract from the results). Reply with JSON only, in this form:\n"
        '{{"subqueries": [{{"query": "...", "subtask": "..."}}]}}'
    ),
)
FOLLOW_UP = Prompt(
    system="You plan research for a question. You reply with JSON only.",
    user=(
        "Research question: {question}\n\nFindings so far:\n{findings}\n\n"
        "If the findings answer the question, reply {{\"done\": true}}. Otherwise reply with up to {n} new searches "
        'for the missing facts: {{"subqueries": [{{"query": "...", "subtask": "..."}}]}}. Reply with JSON only.'
    ),
)
PLAN_TOOLS = Prompt(
    system="You plan research for a question. You reply by calling the plan tool.",
    user=(
        "Research question: {question}\n\n"
        "Call plan with up to {n} subqueries that find the facts needed to answer it. Each has a query (the words to "
        "search for) and a subtask (what to extract from the results). Set done to false."
    ),
)
FOLLOW_UP_TOOLS = Prompt(
    system="You plan research for a question. You reply by calling the plan tool.",
    user=(
        "Research question: {question}\n\nFindings so far:\n{findings}\n\n"
        "If the findings answer the question, call plan with done true and no subqueries. Otherwise call it with up "
        "to {n} new subqueries for the missing facts and done false."
    ),
)
#: the planning protocol `tools`: the one function tool an OpenAI-compatible predictor is made to call; its
#: arguments are checked by `parse_plan`, like a JSON reply
PLAN_TOOL = {
    "name": "plan",
    "description": "Plan the searches for the research question, or say that the findings answer it (done).",
    "parameters": {
        "type": "object",
        "properties": {
            "subqueries": {"type": "array", "items": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "the words to search for"},
                               "subtask": {"type": "string", "description": "what to extract from the results"}},
                "required": ["query", "subtask"]}},
            "done": {"type": "boolean", "description": "true when the findings answer the question"},
        },
        "required": ["subqueries", "done"],
    },
}


def plan_tool(max_subqueries: int) -> str:
    """`PLAN_TOOL` as the JSON a request carries, its list bounded by `maxItems` (a server that constrains a forced
    call to the schema, as llama.cpp's does, then stops after `max_subqueries`)."""
    t = json.loads(json.dumps(PLAN_TOOL))
    t["parameters"]["properties"]["subqueries"]["maxItems"] = max_subqueries
    return json.dumps(t, sort_keys=True)

COMPRESS = Prompt(
    system="You are a careful assistant who summarises documents.",
    user=(
        "Read the passages and write a short summary of the facts they give for this subtask: {subtask}\n"
        "Keep names, places and years exactly as written.\n\nPassages:\n{passages}\n\nSummary:"
    ),
)

_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


class PlanError(ValueError):
    """The predictor's planning reply is not the JSON the protocol asks for."""


@dataclass(frozen=True)
class Subquery:
    query: str
    subtask: str


@dataclass(frozen=True)
class Plan:
    """A parsed reply: new subqueries, or done (the predictor stops early); `dropped` = subqueries over the limit."""

    subqueries: tuple[Subquery, ...]
    done: bool = False
    dropped: int = 0


def tool_arguments(tool_calls: list[dict[str, str]] | None) -> str:
    """The arguments (JSON text) of a reply's call of the plan tool, for `parse_plan`; `PlanError` when the reply
    made no tool call or called another tool."""
    if not tool_calls:
        raise PlanError("reply has no tool call")
    name = tool_calls[0].get("name")
    if name != PLAN_TOOL["name"]:
        raise PlanError(f"reply calls tool {name!r}, not {PLAN_TOOL['name']!r}")
    return str(tool_calls[0].get("arguments") or "")


def parse_plan(text: str, max_subqueries: int, allow_done: bool = False) -> Plan:
    """Parse a planning reply strictly: one JSON object (optionally the only content of a ``` fence) with
    `subqueries`, a non-empty list of {"query": str, "subtask": str} objects or query strings, or with
    allow_done, `{"done": true}`. Anything else raises `PlanError` naming what is wrong. Subqueries past
    `max_subqueries` are dropped (counted in `dropped`)."""
    raw = text.strip()
    m = _FENCE.match(raw)
    if m:
        raw = m.group(1).strip()
    if not raw:
        raise PlanError("empty reply")
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise PlanError(f"reply is not JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(obj, dict):
        raise PlanError(f"reply is JSON {type(obj).__name__}, not an object")
    if allow_done and obj.get("done") is True and not obj.get("subqueries"):
        return Plan((), done=True)
    subs = obj.get("subqueries")
    if not isinstance(subs, list) or not subs:
        raise PlanError("reply has no non-empty 'subqueries' list" + (" and is not {\"done\": true}" if allow_done
                                                                       else ""))
    out: list[Subquery] = []
    for k, s in enumerate(subs):
        if isinstance(s, str):
            q, task = s, s
        elif isinstance(s, dict) and isinstance(s.get("query"), str):
            q = s["query"]
            task = s.get("subtask") if isinstance(s.get("subtask"), str) and s.get("subtask").strip() else q
        else:
            raise PlanError(f"subqueries[{k}] is neither a query string nor an object with a 'query' string")
        if not q.strip():
            raise PlanError(f"subqueries[{k}] has an empty query")
        out.append(Subquery(" ".join(q.split()), " ".join(task.split())))
    return Plan(tuple(out[:max_subqueries]), dropped=max(0, len(out) - max_subqueries))
