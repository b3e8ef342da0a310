#!/usr/bin/env bash
# One command on a fresh machine: set up, then run the embedded default offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/harness run configs/quickstart.yaml "$@"
