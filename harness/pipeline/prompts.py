"""Render the role prompts of a run config for one sample."""

from __future__ import annotations

from harness.config import Prompt
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
