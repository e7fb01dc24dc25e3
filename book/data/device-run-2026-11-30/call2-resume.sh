#!/usr/bin/env bash
# Second, short call: resume the unfinished jobs of the first (their results folders travel in .device/first).
set -u
OUT=$1; TOTAL=$2
export DEVICE=cuda W=$PWD/device-work PY=python3 PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
rm -rf "$W"; mkdir -p "$W"; cp -r .device/first/. "$W/"; mkdir -p "$W/logs2"
export T0=$(date +%s)
export DEADLINE=$(( T0 + TOTAL - 60 ))
say() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$W/logs2/status"; }
ens() {
    local name=$1; shift
    local left=$(( DEADLINE - $(date +%s) ))
    if [ "$left" -lt 15 ]; then say "$name: skipped"; return; fi
    say "$name: start ($left s left)"
    timeout $(( left + 45 )) $PY -m pursamere ensemble "$@" --device "$DEVICE" --quiet \
        --minutes "$(awk "BEGIN {print $left / 60}")" --out "$W/$name" > "$W/logs2/$name.log" 2>&1
    say "$name: exit $?"
}
export -f say ens
sed "s#\.device/cifar10-jpeg#.device/cifar10-jpeg#" .device/resume-jobs.txt > "$W/jobs2.txt"
xargs -P 8 -d '\n' -I{} bash -c '{}' < "$W/jobs2.txt"
(cd "$W" && tar czf "$OUT/results2.tar.gz" --exclude=logs --exclude=logs2 . && tar czf "$OUT/logs2.tar.gz" logs2)
say done
