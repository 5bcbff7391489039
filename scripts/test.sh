#!/usr/bin/env bash
# Set up, then run the whole test suite (pytest). With FACTOR_ARCHIVE_LINT=1, lint and type checks
# (scripts/lint.sh) run first and a finding fails the command before any test runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${FACTOR_ARCHIVE_LINT:-0}" = 1 ]; then
    bash scripts/lint.sh
fi
exec .venv/bin/python -m pytest -q "$@"
