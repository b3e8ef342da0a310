#!/usr/bin/env bash
# Set up a fresh machine: a venv in .venv with torch (CPU build when no GPU is present),
# harness and its test tools, and the offline model packs. Idempotent.
#   HARNESS_CACHE  where packs are cached (default ~/.cache/harness)
#   WITH_SERVER=1  also build llama-cpp-python's server (for the OpenAI-backend tests)
#   PACKS="..."    which packs to fetch (default: smollm2-135m qwen2.5-coder-0.5b)
#   WITH_BROWSER=1 also install Debian's chromium (for the viewer's browser tests; needs root for apt)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch            # CUDA build
  else
    python -m pip install -q "torch==2.13.0"  # CPU build
  fi
fi
python -m pip install -q -e ".[dev,postgres,rag,view]"
if [ "${WITH_BROWSER:-0}" = "1" ] && [ ! -x /usr/bin/chromium ]; then
  # Playwright drives this chromium (browsers are not downloaded)
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
fi
if [ "${WITH_SERVER:-0}" = "1" ]; then
  # rebuilt when missing or when this CPU's flags differ from the build's (a build for another
  # CPU can die with "Illegal instruction")
  want=$(grep -m1 '^flags' /proc/cpuinfo | md5sum | cut -c1-12)
  if ! python -c "import llama_cpp.server" 2>/dev/null || [ "$(cat .venv/.llama-cpu 2>/dev/null)" != "$want" ]; then
    bash scripts/build-llama-server.sh
    echo "$want" > .venv/.llama-cpu
  fi
fi
harness models fetch ${PACKS:-smollm2-135m qwen2.5-coder-0.5b} minilm-l6 --safetensors
