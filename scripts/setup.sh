#!/usr/bin/env bash
# Set up factor-archive in ./.venv (idempotent). System tools used by tests and benchmarks:
# GNU tar, coreutils (sha256sum) and zstd; and libeatmydata (package eatmydata), which a zarr
# restore preloads into its table decoders so that casacore's per-table fsyncs return at once
# (the restore syncs its output itself; docs/usage.md). Installed with apt-get when missing
# and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v tar >/dev/null || missing+=(tar)
command -v sha256sum >/dev/null || missing+=(coreutils)
command -v zstd >/dev/null || missing+=(zstd)
{ command -v ldconfig >/dev/null && ldconfig -p | grep "libeatmydata.so.1 " >/dev/null; } \
    || [ -e /usr/lib/x86_64-linux-gnu/libeatmydata.so.1 ] || missing+=(eatmydata)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
# Byte-compile the package as a regular (non-editable) install would: where bytecode writing is
# off (PYTHONDONTWRITEBYTECODE), every command and casacore worker compiled it from source again.
.venv/bin/python -m compileall -q src/factor_archive >/dev/null || true
.venv/bin/python -c "import factor_archive, casacore.tables, zarr" \
    || { echo "setup failed: factor_archive did not install" >&2; exit 1; }
