"""Example compressions and answers for the report: a few samples per task, chosen reproducibly.

`pick_samples` chooses by a seeded hash of each sample id, so the choice does not depend on row order or on which
other samples the store holds, and every cell of a task shows the same samples (they can be read side by side).
`examples_section` renders them as markdown: question and gold answer, then per cell the compression, the answer
and its verdict, and the rendered prompts where the store kept them (`prompt_json`; NULL in older stores).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import pandas as pd

from harness.analyze.frames import is_null
from harness.analyze.render import md_table

EXAMPLES_PER_TASK = 3
SNIPPET_CHARS = 240


def pick_samples(sample_ids: Iterable[str], k: int = EXAMPLES_PER_TASK, seed: int = 0) -> list[str]:
    """`k` of the distinct `sample_ids`, the smallest by sha256("<seed>:<id>"), in that order."""
    ids = sorted({str(s) for s in sample_ids})
    key = {s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest() for s in ids}
    return sorted(ids, key=lambda s: key[s])[: max(int(k), 0)]


def snippet(text: Any, n: int = SNIPPET_CHARS) -> str:
    """One line of at most `n` characters ("…" when cut), "-" when empty or missing; "<" written as "&lt;" so a
    model's text never becomes markup in the markdown or the HTML report."""
    if is_null(text) or str(text).strip() == "":
        return "-"
    s = " ".join(str(text).split())
    s = s if len(s) <= n else s[: n - 1] + "…"
    return s.replace("<", "&lt;")


def prompt_text(prompt_json: Any) -> str | None:
    """A stored prompt as plain text: chat messages as "[role]" blocks, a raw prompt as is, else key: value lines;
    None when the store has none."""
    if is_null(prompt_json) or prompt_json == "":
        return None
    try:
        p = json.loads(prompt_json) if isinstance(prompt_json, str) else prompt_json
    except json.JSONDecodeError:
        return str(prompt_json)
    if isinstance(p, dict) and isinstance(p.get("messages"), list):
        msgs = [m for m in p["messages"] if isinstance(m, dict)]
        return "\n\n".join(f"[{m.get('role', '?')}]\n{m.get('content', '')}" for m in msgs)
    if isinstance(p, dict) and isinstance(p.get("prompt"), str):
        return p["prompt"]
    if isinstance(p, dict):
        return "\n".join(f"{k}: {v}" for k, v in p.items())
    return str(p)


def _verdict(r: pd.Series) -> str:
    if r.get("status") == "error":
        return f"error ({r.get('error_stage')})"
    if not is_null(r.get("correct")):
        return "correct" if bool(r["correct"]) else "wrong"
    if not is_null(r.get("value")):
        return f"{r.get('metric')} = {float(r['value']):.3f}"
    return "-"


def _details(summary: str, body: str) -> list[str]:
    """A collapsed block (HTML <details>, kept by markdown viewers) holding `body` as preformatted text."""
    fence = "````" if "```" in body else "```"
    return ["<details><summary>" + summary + "</summary>", "", fence + "text", body, fence, "", "</details>", ""]


def examples_section(
    frames: dict[str, pd.DataFrame], cells: pd.DataFrame, preds: pd.DataFrame, labels: dict[str, str],
    k: int = EXAMPLES_PER_TASK, seed: int = 0,
) -> list[str]:  # fmt: skip
    """Markdown lines: per task, `k` samples (`pick_samples`) with each cell's compression, answer and verdict."""
    L = ["## Examples", ""]
    if cells.empty or preds.empty:
        return [*L, "No predictions: no examples.", ""]
    L += [
        f"{k} samples per task, chosen by a seeded hash of the sample id (seed {seed}: rerunning the report shows "
        "the same ones), with every cell's compression and answer for each, so the cells can be compared on the "
        "same samples. Texts are cut to one line; the rendered prompts (where the store kept them) are folded.",
        "",
    ]
    samples = frames["samples"].drop_duplicates(["task", "sample_id"]).set_index(["task", "sample_id"])
    comps = frames["compressions"].set_index("compression_id")
    pr = frames["predictions"].set_index("prediction_id")
    for task, tc in cells.groupby("task", sort=True):
        tp = preds[preds["cell_id"].isin(list(tc["cell_id"]))]
        for sid in pick_samples(tp["sample_id"], k, seed):
            s = samples.loc[(task, sid)] if (task, sid) in samples.index else None
            L.append(f"### `{sid}` ({task})")
            L.append("")
            if s is not None:
                gold = json.loads(s["answers_json"]) if isinstance(s["answers_json"], str) else []
                L.append(f"- question: {snippet(s['question'], 400)}")
                L.append(f"- gold: {snippet(' | '.join(map(str, gold)), 200)}")
                L.append("")
            rows, folded, shown = [], [], set()
            for _, c in tc.iterrows():
                hit = tp[(tp["cell_id"] == c["cell_id"]) & (tp["sample_id"] == sid)]
                if hit.empty:
                    continue
                r = hit.iloc[0]
                comp_text, comp_tokens, comp_prompt = "-", "", None
                cid = r.get("compression_id")
                if not is_null(cid) and int(cid) in comps.index:
                    co = comps.loc[int(cid)]
                    comp_text = snippet(co["text"]) if is_null(co["error"]) else f"error: {snippet(co['error'], 120)}"
                    comp_tokens = "" if is_null(co["n_tokens"]) else f" ({int(co['n_tokens'])} tok)"
                    if int(cid) not in shown:  # a compression read by several predictors: its prompt once
                        comp_prompt = prompt_text(co.get("prompt_json"))
                        shown.add(int(cid))
                pred_prompt = None
                pid = r.get("prediction_id")
                if not is_null(pid) and int(pid) in pr.index:
                    pred_prompt = prompt_text(pr.loc[int(pid)].get("prompt_json"))
                label = labels.get(str(c["cell_id"]), str(c["cell_id"]))
                rows.append([label, comp_text + comp_tokens, snippet(r.get("prediction"), 120), _verdict(r)])
                for who, text in (("compressor", comp_prompt), ("predictor", pred_prompt)):
                    if text is not None:
                        folded += _details(f"{label}: {who} prompt", text)
            L += [md_table(["cell", "compression", "answer", "verdict"], rows), ""]
            L += folded
    return L
