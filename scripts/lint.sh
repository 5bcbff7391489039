#!/usr/bin/env bash
# Lint (ruff) and type-check (mypy) the code base, as configured in pyproject.toml (both come with
# the test extra). Both always run; the status is non-zero when either finds something.
# FACTOR_ARCHIVE_VENV: use another checkout's venv (default: ./.venv).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${FACTOR_ARCHIVE_VENV:-.venv}/bin/python
status=0
"$PY" -m ruff check src tests benchmarks || status=1
"$PY" -m mypy || status=1
exit $status
