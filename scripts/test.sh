#!/usr/bin/env bash
# Set up, then lint and type-check (scripts/lint.sh: a finding fails the command before any test
# runs), then run the whole test suite (pytest). FACTOR_ARCHIVE_LINT=0 skips the lint step.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${FACTOR_ARCHIVE_LINT:-1}" != 0 ]; then
    bash scripts/lint.sh
fi
exec .venv/bin/python -m pytest -q "$@"
