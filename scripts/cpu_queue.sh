#!/usr/bin/env bash
# The recorded tables' unfinished jobs, continued on this machine's CPU, in priority order:
#
#   python scripts/record_tables.py results/whole --restore   # a fresh checkout: recorded rows + rows in progress
#   nohup bash scripts/cpu_queue.sh [LANES] > results/whole/queue.log 2>&1 &
#   python scripts/run_status.py results/whole                # where each job stands: rows done, the row it is in
#   ...                                                       # stop whenever: kill the queue, its lanes and jobs
#   python scripts/record_tables.py results/whole --readme README.md  # record finished rows and the rows in
#                                                       # progress; the README's recorded tables rewritten
#
# LANES jobs at a time (default 2, one thread each: the machine's two cores). Each job continues its folder under
# results/whole with --resume and its log is results/whole/NAME.cpu.log. A stopped job loses at most the batch it
# was in (CIFAR-10 batches of 8 or 2, digits of 64: a row in progress is kept per batch, and the batch size is part of
# its identity, so keep these). A cifar40-* job (the 40-step check) starts from a copy of its 20-step job's ℓ∞ rows
# and a cifar80-* job (the next rung) from its 40-step job's, a cifar160-* job from its 80-step job's; a digits160-*
# job (the 160-step suite) starts from a copy of its 80-step digits-* job's rows, a digits320-* job from its 160-step
# job's. A job is seeded only from a finished
# one (else it says so and stops): put a job whose source is still running on the same line, after it (&&).
# Take a line out when its job is finished and recorded.
# DRY=1: print the commands instead of running them.
set -u
LANES=${1:-2}
ROOT=results/whole
PY=${PY:-.venv/bin/python}
DATA=${CIFAR_DATA:-../shared/data/cifar10-jpeg}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the scripts import the package from this checkout
export ROOT PY DATA OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1

job() {  # job NAME ARGS...: one ensemble job, resumed; exit 0 only when it finished (not stopped)
    local name=$1; shift
    local src=""
    case $name in
        cifar40-*) src="$ROOT/cifar-${name#cifar40-}" ;;    # the 40-step check starts from the 20-step job's rows
        cifar80-*) src="$ROOT/cifar40-${name#cifar80-}" ;;  # the 80-step rung from the 40-step check's
        cifar160-*) src="$ROOT/cifar80-${name#cifar160-}" ;;  # the 160-step rung from the 80-step rung's
        digits160-*) src="$ROOT/digits-${name#digits160-}" ;;  # the 160-step suite from the 80-step job's rows
        digits320-*) src="$ROOT/digits160-${name#digits320-}" ;;  # the 320-step rung from the 160-step job's
    esac
    if [ -n "$src" ] && [ ! -f "$ROOT/$name/results.json" ] && [ "${DRY:-}" != 1 ]; then
        [ -f "$src/results.json" ] || { echo "$name: no $src to start from"; return 1; }
        # only from a finished job: an unfinished one's attacks would run twice (there and in the copy)
        $PY scripts/record_tables.py "$src" --finished > /dev/null
        case $? in 0) ;; 3) echo "$name: $src has not finished; run it first"; return 1 ;;
            *) echo "$name: could not read whether $src has finished (see the error above)"; return 1 ;; esac
        # into the folder, never over what it holds (rows in progress a restore wrote back before any results.json)
        # (cp -n: some coreutils versions exit 1 when they skip a file; what counts is the copied results.json)
        mkdir -p "$ROOT/$name" && { cp -rn "$src"/. "$ROOT/$name"/; [ -f "$ROOT/$name/results.json" ]; } || return 1
        # a digits job holds one ε at ℓ∞ and runs no checks; a CIFAR-10 one keeps its ℓ∞ rows only
        case $name in cifar*) $PY scripts/record_tables.py "$ROOT/$name" --keep-linf || return 1 ;; esac
    fi
    echo "$(date -u +%FT%TZ) $name: start"
    if [ "${DRY:-}" = 1 ]; then echo "$PY -m pursamere ensemble $(printf '%q ' "$@")--quiet --resume --out $ROOT/$name"; return 0; fi
    $PY -m pursamere ensemble "$@" --quiet --resume --out "$ROOT/$name" >> "$ROOT/$name.cpu.log" 2>&1
    local rc=$?
    echo "$(date -u +%FT%TZ) $name: exit $rc"
    [ "$rc" = 0 ] && ! grep -q '"stopped":' "$ROOT/$name/results.json" 2> /dev/null
}
export -f job

C="--preset cifar10-cpu --data-root $DATA --n 256 --part key --batch-size 8"
# the long rungs attack few images (10 and 4) for hours per attack: batches of 2 keep a stopped row's progress every
# ≈ 40 minutes instead of losing the whole row (finished rows are reused whatever the batch size; rows in progress
# are resumed only at the batch size they were started with, so keep this one). None is queued now (PurSAMERE's
# 80-step and ERE descent's 160-step rungs finished on 2026-12-04; a stochastic row restarts whole whatever its batch)
C2="--preset cifar10-cpu --data-root $DATA --n 256 --part key --batch-size 2"
CR="--preset cifar10-cpu --data-root $DATA --n 128 --part rest --batch-size 8"  # the other rows: the first 128 images
CR2="--preset cifar10-cpu --data-root $DATA --n 128 --part rest --batch-size 2"  # their 40-step check (few images, long)
D="--preset digits --weights shipped --n 476 --batch-size 64 --steps 80"
ERE="'ERE descent (no SAM) ε_pur=0.3'"
ATERE="'PGD-AT + ERE descent (no SAM) ε_pur=0.3'"
# Order (2026-12-04, after the day's two GPU leases took every job below part of the way): the job whose row in
# progress is closest to finishing first (a job may go on to rows not started: cifar-ere and cifar-eq17-ere to ℓ2
# and ℓ1), CIFAR-10's table before digits' where the costs are alike. cifar40-rest-pursamere (added 2026-12-04, the
# 40-step check of PurSAMERE at ε_pur 8 and 16/255) follows cifar-rest-pursamere on its line, once that has
# finished. On 2026-12-05 digits160-0.2-ere (2 attacks left) moved to the first line, ahead of that 5-hour check, with
# digits320-0.2-ere after it: its 160-step suite broke 10 of 126 (over the 1-in-100 bar), so ERE descent at ε = 0.2
# gets a 320-step rung (--then-steps 160,320) on what the 80- and 160-step suites left. Then cifar-ere, whose ℓ2 row
# has one attack left and whose ℓ1 row (the issue's ℓ1 row for the key table's purifier) may be short (the eq.-17
# pairing's took 31 minutes: ℓ1-APGD broke every image BPDA left), ahead of cifar-eq17-ere, which has only its
# obfuscation checks left. CPU-hours per job: book/reproducibility.md.
xargs -P "$LANES" -d '\n' -I{} bash -c '{}' <<JOBS
job digits160-0.2-ere $D --then-steps 160 --eps 0.2 --only $ERE && job digits320-0.2-ere $D --then-steps 160,320 --eps 0.2 --only $ERE
job cifar-ere $C --only 'ERE descent' --purifier-classifier clean
job cifar-rest-pursamere $CR --only PurSAMERE --purifier-classifier clean && job cifar40-rest-pursamere $CR2 --then-steps 40 --only PurSAMERE --purifier-classifier clean
job cifar-eq17-ere $C --only 'ERE descent' --purifier-classifier eq17
job digits160-0.2-at-ere $D --then-steps 160 --eps 0.2 --only $ATERE
job digits160-0.15-ere $D --then-steps 160 --eps 0.15 --only $ERE
job cifar-eq17-pursamere $C --only PurSAMERE --purifier-classifier eq17
job digits160-0.15-pursamere $D --then-steps 160 --eps 0.15 --only PurSAMERE
job digits160-0.15-at-ere $D --then-steps 160 --eps 0.15 --only $ATERE
job digits160-0.1-pursamere $D --then-steps 160 --eps 0.1 --only PurSAMERE
JOBS
