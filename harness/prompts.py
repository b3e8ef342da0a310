"""Render the role prompts of a run config for one sample."""

from __future__ import annotations

from harness.config import Prompt, Prompts
from harness.records import Message, Sample


def choices_block(sample: Sample) -> str:
    """The options as a list; the model is asked to copy the right one (letters invite position bias
    in small models, and the metric parses option text as well as letters)."""
    if not sample.choices:
        return ""
    lines = [f"- {c}" for c in sample.choices]
    return "Options:\n" + "\n".join(lines) + "\nReply with the correct option, copied exactly."


def render(prompt: Prompt, **fields: str) -> list[Message]:
    msgs: list[Message] = []
    if prompt.system:
        msgs.append({"role": "system", "content": prompt.system})
    msgs.append({"role": "user", "content": prompt.user.format(**fields).strip()})
    return msgs


def arm_input(prompts: Prompts, arm: str, sample: Sample, summary: str | None = None) -> tuple[str, Prompt, str]:
    """(variable text, template, its placeholder) that the predictor reads in `arm`.

    compressed: the summary; full-context: the context; gold-context: the gold documents (the whole
    context for continuation samples, which mark no gold evidence); no-context: nothing ("", no placeholder).
    """
    if arm == "compressed":
        if summary is None:
            raise ValueError("the compressed arm needs a summary")
        return summary, prompts.predictor, "summary"
    if arm == "full-context" or (arm == "gold-context" and sample.answer_type == "continuation"):
        return sample.context, prompts.full_context, "context"
    if arm == "gold-context":
        return sample.gold_context(), prompts.full_context, "context"
    if arm == "no-context":
        return "", prompts.no_context, ""
    raise ValueError(f"unknown arm '{arm}'")


def arm_messages(prompt: Prompt, key: str, sample: Sample, text: str) -> list[Message]:
    """The predictor's chat messages: `prompt` rendered with the question, the options and `text` under `key`."""
    fields = {"question": sample.question, "choices": choices_block(sample)}
    if key:
        fields[key] = text
    return render(prompt, **fields)
