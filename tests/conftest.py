"""Shared fixtures. Real models: each is loaded once per test session.

Under CI (CI=true) a test whose model pack or service is missing FAILS instead of skipping.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.backends import packs

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[1]


def need(ok: bool, reason: str) -> None:
    """Skip locally, fail under CI, when a prerequisite is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing under CI: {reason}")
    pytest.skip(reason)


def need_pack(alias: str) -> Path:
    need(packs.is_present(alias), f"model pack {alias} not fetched (harness models fetch {alias})")
    return packs.gguf_path(alias)


@pytest.fixture
def offline_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep `datasets` caches under tmp_path and the hub offline (loader tests read local files only)."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def smollm2():
    """The smallest real instruct model through transformers, pinned to float32 (tests compare log-probs
    across batch shapes and implementations, which bf16 rounding would blur), loaded once."""
    need_pack("smollm2-135m")
    from harness.backends.transformers import TransformersBackend

    be = TransformersBackend("gguf", "smollm2-135m", dtype="float32", batch_size=4)
    be._load()
    yield be
    be.close()


@pytest.fixture(scope="session")
def smollm2_bf16():
    """The same model in bfloat16, for the tests of the bf16 path (emulated, slower, on AVX2-only CPUs)."""
    need_pack("smollm2-135m")
    from harness.backends.transformers import TransformersBackend

    be = TransformersBackend("gguf", "smollm2-135m", dtype="bfloat16", batch_size=4)
    be._load()
    yield be
    be.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """A real llama-cpp-python OpenAI-compatible server on 127.0.0.1 serving smollm2-135m."""
    gguf = need_pack("smollm2-135m")
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        need(False, "llama-cpp-python[server] not installed (scripts/setup.sh with WITH_SERVER=1)")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as lf:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "4096",
                "--n_threads",
                "2",
                "--logits_all",
                "true",
                "--model_alias",
                "smollm2",
            ],
            stdout=lf,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    import httpx

    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("llama server did not come up in 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
