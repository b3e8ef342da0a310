"""The LM compressor: a backend (transformers, llama.cpp server, vLLM, OpenAI-compatible) and the compressor prompt."""

from __future__ import annotations

import dataclasses
from typing import Any

from harness.compressors.base import CompressInput
from harness.config import Prompt
from harness.pipeline.stages import fit_request
from harness.prompts import render
from harness.records import Generation, GenParams, GenRequest, ModelIdentity, Sample


class LMCompressor:
    """Renders the compressor prompt with the sample's question and context and generates with `backend`.

    Compressions carry the backend's token ids (and log-probs where asked for), so the compressor can score its own
    outputs exactly (MI scorer "self").
    """

    deterministic = False

    def __init__(self, spec: str, backend: Any, prompt: Prompt, greedy: GenParams):
        self.spec = spec
        self.backend = backend
        self.prompt = prompt
        self.greedy = greedy  # the params the window check assumes (max_new_tokens is what matters)

    def identity(self) -> ModelIdentity:
        return self.backend.identity()

    def count_tokens(self, text: str) -> int | None:
        return self.backend.count_tokens(text)

    def prepare(self, sample: Sample, overflow: str) -> tuple[CompressInput | None, str | None]:
        def build(ctx: str) -> GenRequest:
            return GenRequest.chat(render(self.prompt, question=sample.question, context=ctx), self.greedy)

        req, truncated, err = fit_request(self.backend, build, sample.context, overflow)
        if err:
            return None, err
        return CompressInput(sample, sample.context, truncated, req), None

    def compress(self, jobs: list[tuple[CompressInput, GenParams]]) -> list[Generation]:
        reqs = []
        for inp, params in jobs:
            assert inp.request is not None
            reqs.append(dataclasses.replace(inp.request, params=params))
        return self.backend.generate(reqs)

    @property
    def scorer(self) -> Any:
        return self.backend

    def close(self) -> None:
        self.backend.close()
