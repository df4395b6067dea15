#!/usr/bin/env bash
# POSIX conformance: pjdfstest (github.com/pjd/pjdfstest) as root, side by side on the bare disk,
# in a job's temp/ and in shared/ of a fresh wsfs mount.  Prints one summary line per place.
#
#   bench/pjdfstest.sh /path/to/pjdfstest          # a checkout, built (autoreconf -ifs && ./configure && make pjdfstest)
#
# pjdfstest is in no package registry, so bring its source yourself.  DIR (default
# /var/tmp/wsfs-pjdfstest) holds the plain directory, the data dir and the mount point; it
# must be on the disk you want to compare with.  Needs root, prove (perl) and the venv (make venv).
set -euo pipefail
suite=${1:?usage: bench/pjdfstest.sh /path/to/built/pjdfstest}
suite=$(readlink -f "$suite")
[ -x "$suite/pjdfstest" ] || { echo "no built $suite/pjdfstest (run: autoreconf -ifs && ./configure && make pjdfstest)" >&2; exit 2; }
here=$(dirname "$(dirname "$(readlink -f "$0")")")
dir=${DIR:-/var/tmp/wsfs-pjdfstest}
wsfs="$here/.venv/bin/wsfs"
rm -rf "$dir" && mkdir -p "$dir/plain" "$dir/mnt"
cleanup() { "$wsfs" unmount "$dir/mnt" >/dev/null 2>&1 || fusermount3 -uz "$dir/mnt" 2>/dev/null || true; }
trap cleanup EXIT
"$wsfs" mount "$dir/mnt" --data "$dir/data" --allow-other
mkdir "$dir/mnt/workspaces/pjd" "$dir/mnt/shared/pjd"

run() {  # run PLACE WHERE: prove's summary for the whole suite, failures listed in $dir/PLACE.log
    local place=$1 where=$2 log="$dir/$1.log"
    (cd "$where" && prove -r "$suite/tests" >"$log" 2>&1) || true
    local files tests failed
    files=$(grep -oP '^Files=\K[0-9]+' "$log" || echo '?')
    tests=$(grep -oP 'Tests=\K[0-9]+' "$log" || echo '?')
    failed=$(grep -oP 'Failed \K[0-9]+(?=/[0-9]+ subtests)' "$log" | paste -sd+ | bc 2>/dev/null || echo 0)
    printf '%-10s %6s files %7s tests %5s failed   (%s)\n' "$place" "$files" "$tests" "${failed:-0}" "$log"
}
run disk "$dir/plain"
run job-temp "$dir/mnt/workspaces/pjd/temp"
run shared "$dir/mnt/shared/pjd"
