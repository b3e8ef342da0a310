#!/usr/bin/env bash
# One command on a fresh machine: set up (incl. the llama.cpp server build), then run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_SERVER=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1
set +e
.venv/bin/python -m pytest -ra "$@"
rc=$?
set -e
# pytest exit 5 = no tests collected: treat as a failure of the suite, not a pass
if [ "$rc" = 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
