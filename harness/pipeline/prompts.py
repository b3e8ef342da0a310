"""Render the role prompts of a run config for one sample."""

from __future__ import annotations

from harness.config import Prompt
from harness.records import Message, Sample


def choices_block(sample: Sample) -> str:
    if not sample.choices:
        return ""
    lines = [f"{chr(65 + k)}. {c}" for k, c in enumerate(sample.choices)]
    return "Options:\n" + "\n".join(lines) + "\nReply with the letter and the text of the correct option."


def render(prompt: Prompt, **fields: str) -> list[Message]:
    msgs: list[Message] = []
    if prompt.system:
        msgs.append({"role": "system", "content": prompt.system})
    msgs.append({"role": "user", "content": prompt.user.format(**fields).strip()})
    return msgs
