#!/usr/bin/env bash
# Set up, then archive the bundled sample Factor run, restore it elsewhere, verify, and report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bin=.venv/bin
work=$(mktemp -d "${TMPDIR:-/tmp}/factor-archive-demo.XXXXXX")
echo "== writing the sample Factor run to $work/sample"
$bin/factor-archive sample "$work/sample"
parset="$work/sample/factor.parset"
echo "== archivefactor -r -d facet1 (directory form)"
$bin/archivefactor -r -d facet1 "$parset" "$work/archive"
echo "== archivefactor -r --format tar"
$bin/archivefactor -r --format tar "$parset" "$work/archive.tar"
echo "== archivefactor -r --format zarr (Measurement Sets as compressed column arrays)"
$bin/archivefactor -r "$parset" "$work/archive.zarr"
echo "== factor-archive verify (all three forms)"
$bin/factor-archive verify "$work/archive"
$bin/factor-archive verify "$work/archive.tar"
$bin/factor-archive verify "$work/archive.zarr"
du -sh "$work/archive" "$work/archive.tar" "$work/archive.zarr"
echo "== factor-archive ls (first lines)"
$bin/factor-archive ls "$work/archive" > "$work/listing.txt"
sed -n 1,15p "$work/listing.txt"
echo "== unarchivefactor into a new working directory"
$bin/unarchivefactor "$work/archive" "$work/restored"
echo "== unarchivefactor from the tar, streamed through a pipe, and from the zarr store"
cat "$work/archive.tar" | $bin/unarchivefactor -q - "$work/restored-from-tar"
$bin/unarchivefactor -q "$work/archive.zarr" "$work/restored-from-zarr"
echo "== the restored run's parset (dir_working and dir_ms point at the restored run)"
grep -E "^(dir_working|dir_ms|directions_file)" "$work/restored/factor.parset"
echo "== restored tree"
(cd "$work/restored" && find . -maxdepth 3 -type d | sort > "$work/tree.txt")
sed -n 1,30p "$work/tree.txt"
echo "done: everything is under $work"
