#!/usr/bin/env bash
# One command on a fresh machine: set up (incl. the llama.cpp server build), then run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_SERVER=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1
# PostgreSQL for the store tests: a throwaway local cluster (needs root for apt; under CI a
# failure here fails the run, elsewhere the Postgres tests skip)
if [ -z "${HARNESS_TEST_PG_URL:-}" ]; then
  if url=$(bash scripts/start-postgres.sh | tail -1) && [ -n "$url" ]; then
    export HARNESS_TEST_PG_URL="$url"
  elif [ "${CI:-}" = "true" ]; then
    echo "could not start PostgreSQL" >&2; exit 1
  fi
fi
set +e
.venv/bin/python -m pytest -ra "$@"
rc=$?
set -e
# pytest exit 5 = no tests collected: treat as a failure of the suite, not a pass
if [ "$rc" = 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
