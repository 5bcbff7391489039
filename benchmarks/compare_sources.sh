#!/usr/bin/env bash
# Before/after of a change: the same archive and restore commands, every form, run with two source
# trees in turn (PYTHONPATH selects the sources; the venv's console scripts honour it).
# Usage: benchmarks/compare_sources.sh PARSET ROUNDS BEFORE_SRC AFTER_SRC [OUTDIR]
#   e.g. git worktree add /tmp/before <rev>; benchmarks/compare_sources.sh \
#        /tmp/fa-bench-run/run/factor.parset 2 /tmp/before/src src
# FORMS="zarr" (environment) limits the forms measured (default: dir tar zarr).
# Prints one line per command: side form op wall_s user_s sys_s max_rss_kB and the load average.
set -u
PARSET=$1 ROUNDS=$2
declare -A SRC=([before]=$(realpath "$3") [after]=$(realpath "$4"))
OUT=${5:-$(mktemp -d /tmp/fa-compare.XXXXXX)}
mkdir -p "$OUT"
BIN=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
TIMES=$OUT/time.txt
timed() {
    local label=$1; shift
    if ! /usr/bin/time -f "%e %U %S %M" -o "$TIMES" "$@" >/dev/null 2>"$OUT/err.txt"; then
        echo "$label FAILED: $(tail -1 "$OUT/err.txt")"; return
    fi
    sync
    echo "$label $(cat "$TIMES") load=$(cut -d' ' -f1 /proc/loadavg)"
}
for _ in $(seq 1 "$ROUNDS"); do
    for side in before after; do
        for form in ${FORMS:-dir tar zarr}; do
            rm -rf "$OUT/archive" "$OUT/restored"
            PYTHONPATH=${SRC[$side]} timed "$side $form archive" \
                "$BIN/archivefactor" -q -r --format "$form" "$PARSET" "$OUT/archive"
            PYTHONPATH=${SRC[$side]} timed "$side $form restore" \
                "$BIN/unarchivefactor" -q "$OUT/archive" "$OUT/restored"
        done
    done
done
rm -rf "$OUT/archive" "$OUT/restored"
