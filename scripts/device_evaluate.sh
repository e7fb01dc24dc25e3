#!/usr/bin/env bash
# The recorded evaluations a CPU cannot afford, run on a lent GPU in one call:
#
#   bash scripts/device_evaluate.sh OUT SECONDS CIFAR_DATA [tiny]
#
#   OUT         where the results come back: OUT/results.tar.gz (every results folder) and OUT/logs.tar.gz
#   SECONDS     the whole call's time: the jobs stop cleanly 100 s before it (finished rows kept), a hard
#               timeout ends anything still running 10 s before it, and the archives are written last
#   CIFAR_DATA  the folder with test.tar.gz (+ SHA256SUMS) of the CIFAR-10 JPEG copy
#   tiny        the CPU rehearsal (DEVICE=cpu): a few images, one step per attack
#
# 1. smoke: every attack path of both presets on a few images (a failure stops the call at once,
#    when a rerun is still affordable); it also decodes and caches the CIFAR-10 test images. SMOKE=0 skips it
#    (the 2026-12-04 leases did: it had cost the first lease 129 s of 505, and a job that fails early ends only its
#    own slot);
# 2. the jobs, from a queue in priority order, PARALLEL at a time (the GPU interleaves them), all
#    stopping cleanly at one deadline; each writes its own results folder (rows saved as they
#    finish), merged afterwards on the CPU with pursamere.evaluation.results.merge_results:
#    - CIFAR-10 (cifar10-cpu, shipped weights): key rows on 256 images at the paper's step counts,
#      then the rest on 128 (a prefix of the same images), by defence group;
#    - digits (shipped weights): every key row on all 476 table images at ℓ∞ 0.2 / 0.1 / 0.15 with
#      the ensemble at 80 steps × 1 restart (chapter 7's ladder), by ε and defence group; the
#      digits160-* jobs: at ℓ∞ 0.2 then 0.15 (and PurSAMERE at 0.1), the 160-step suite on the 80-step suite's
#      survivors (--then-steps 160, each started from its 80-step job's folder); digits320-0.2-ere, ERE descent's
#      320-step rung at ℓ∞ 0.2 (--then-steps 160,320), after its 160-step job on the same line, once that finished;
#    - cifar40-* jobs: the CIFAR-10 key rows' (and the other rows' PurSAMERE, cifar40-rest-pursamere) convergence check at ℓ∞ 8/255, the 40-step suite on the 20-step suite's
#      survivors (--then-steps 40, each started from its 20-step job's ℓ∞ rows; cifar40-pursamere after
#      cifar-pursamere on the same queue line, so the 20-step attacks it lacks run once); then cifar80-*, the
#      next rung (--then-steps 40,80), on the same line, started from its 40-step job once that has finished, and
#      then cifar160-* (--then-steps 40,80,160) after its 80-step job;
#    the unfinished work first (as recorded after 2026-12-04's leases), then the jobs already recorded, the
#    convergence checks (doubled budgets) among them (quick no-ops with RESUME_FROM, full re-runs without).
#
# The CIFAR-10 purifier jobs of the recorded table say --purifier-classifier clean (its rows were made in front of
# the clean classifier, before the eq.-17 one shipped); the cifar-eq17-* jobs run the paper's pairing beside them.
#
# RESUME_FROM=DIR (e.g. results/whole, carried to the machine): a job whose folder DIR/NAME holds a
# results.json starts from a copy of it with --resume (finished rows reused, only what is missing runs).
# On a fresh checkout, `python scripts/record_tables.py results/whole --restore` first writes the recorded
# rows of book/data/ back into those folders.
# JOBS_FIRST=N: run only the queue's first N lines (after 2026-12-04's leases, the 10 unfinished jobs, PARALLEL=10 at once).
# A call may carry 64 MiB with the working tree, and results/whole passed that on 2026-12-04: carry a copy of just
# the folders the jobs start from. CARRY_TO=DIR gathers them (here, before the call; runs no job, packs nothing,
# writes nothing but DIR). Stop the CPU queue first and keep it stopped until the GPU's folders are taken in:
#   CARRY_TO=results/gpu-in JOBS_FIRST=10 RESUME_FROM=results/whole bash scripts/device_evaluate.sh /tmp/o 100000 x
# then call with RESUME_FROM=results/gpu-in and carry ["results/gpu-in", ".device"].
# The machine goes back 30 s after a call and a new one starts bare: a second call carries the first call's
# results (its results.tar.gz unpacked into a folder of its own) the same way.
# Back on the CPU: `python scripts/record_tables.py results/whole --from-device DIR` (DIR: a results.tar.gz unpacked)
# takes the folders in and marks the rows the GPU finished as 'gpu'.
# DRY=1: print each job's command line instead of running it (checks the queue without a machine).
set -u
OUT=${1:?OUT}; SECONDS_TOTAL=${2:?SECONDS}; DATA=${3:?CIFAR_DATA}; TINY=${4:-}
export DEVICE=${DEVICE:-cuda} PARALLEL=${PARALLEL:-8}
export W=$PWD/device-work
if [ -n "${CARRY_TO:-}" ]; then  # a new folder only: never over results; one job at a time (two jobs may carry the
    # same folder), its log in a scratch folder, not device-work (which would travel with the working tree)
    if [ -e "$CARRY_TO" ] && [ -n "$(ls -A "$CARRY_TO" 2> /dev/null)" ]; then echo "CARRY_TO=$CARRY_TO is not empty: give a new folder" >&2; exit 2; fi
    mkdir -p "$CARRY_TO"; SMOKE=0; PARALLEL=1; W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
fi
[ -n "${CARRY_TO:-}" ] || rm -rf "$W"
mkdir -p "$W/logs"; [ -n "${CARRY_TO:-}" ] || mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export PY=${PY:-python3}
export SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$W/logs/status"; }

pack() {
    (cd "$W" && tar czf "$OUT/results.tar.gz" --exclude=logs . && tar czf "$OUT/logs.tar.gz" logs)
    say "packed: $(du -h "$OUT/results.tar.gz" | cut -f1) of results"
}

ens() {  # ens NAME ARGS...: one ensemble job until DEADLINE (epoch seconds), its log in logs/NAME.log
    local name=$1; shift
    local left=$(( DEADLINE - $(date +%s) ))
    if [ "$left" -lt 20 ]; then say "$name: skipped (no time left)"; return; fi
    local resume=""
    local from=""
    if [ -n "${RESUME_FROM:-}" ] && [ -f "$RESUME_FROM/$name/results.json" ]; then from="$RESUME_FROM/$name"
    elif [ -n "${RESUME_FROM:-}" ] && [ "${name#digits160-}" != "$name" ] && [ -f "$RESUME_FROM/digits-${name#digits160-}/results.json" ]; then
        from="$RESUME_FROM/digits-${name#digits160-}"  # a 160-step job starts from its 80-step job's rows, once finished
        if [ -z "${CARRY_TO:-}" ]; then
            $PY "$SCRIPTS_DIR/record_tables.py" "$from" --finished > /dev/null
            case $? in 0) ;; 3) say "$name: skipped (digits-${name#digits160-} has not finished)"; return ;;
                *) say "$name: skipped (could not read whether digits-${name#digits160-} has finished: see the error above)"; return ;; esac
        fi
    elif [ "${name#cifar40-}" != "$name" ] && [ -f "$W/logs/cifar-${name#cifar40-}.finished" ]; then
        from="$W/cifar-${name#cifar40-}"  # a 40-step CIFAR-10 job starts from its 20-step job's rows, finished in this call
    elif [ -n "${RESUME_FROM:-}" ] && [ "${name#cifar40-}" != "$name" ] && [ -f "$RESUME_FROM/cifar-${name#cifar40-}/results.json" ]; then
        from="$RESUME_FROM/cifar-${name#cifar40-}"  # ... or as recorded, once finished (else its attacks would run twice)
        if [ -z "${CARRY_TO:-}" ]; then  # (a carry gathers that folder for its own job on the same line anyway)
            $PY "$SCRIPTS_DIR/record_tables.py" "$from" --finished > /dev/null
            case $? in 0) ;; 3) say "$name: skipped (cifar-${name#cifar40-} has not finished)"; return ;;
                *) say "$name: skipped (could not read whether cifar-${name#cifar40-} has finished: see the error above)"; return ;; esac
        fi
    elif [ "${name#cifar80-}" != "$name" ] && [ -f "$W/logs/cifar40-${name#cifar80-}.finished" ]; then
        from="$W/cifar40-${name#cifar80-}"  # the 80-step rung starts from its 40-step job, finished in this call
    elif [ "${name#cifar160-}" != "$name" ] && [ -f "$W/logs/cifar80-${name#cifar160-}.finished" ]; then
        from="$W/cifar80-${name#cifar160-}"  # the 160-step rung from its 80-step job, finished in this call
    elif [ "${name#digits320-}" != "$name" ] && [ -f "$W/logs/digits160-${name#digits320-}.finished" ]; then
        from="$W/digits160-${name#digits320-}"  # the digits 320-step rung from its 160-step job, finished in this call
    fi
    if [ -n "${CARRY_TO:-}" ]; then  # only gather what the job would start from, for the call to carry
        if [ -n "$from" ]; then
            rm -rf "${CARRY_TO:?}/$(basename "$from")" && cp -r "$from" "$CARRY_TO/" && say "$name: carry $(basename "$from")"
        elif [ "${name#cifar80-}" != "$name" ] || [ "${name#cifar160-}" != "$name" ] || [ "${name#digits320-}" != "$name" ]; then
            say "$name: nothing to carry (starts from the rung before, if this call finishes it)"
        else say "$name: nothing to carry (starts from scratch)"; fi
        return
    fi
    if [ -z "$from" ] && [ "${name#cifar40-}" != "$name" ] && [ "${DRY:-}" != 1 ]; then  # never both suites from scratch
        say "$name: skipped (cifar-${name#cifar40-} has not finished)"; return
    fi
    if [ -z "$from" ] && [ "${name#cifar80-}" != "$name" ] && [ "${DRY:-}" != 1 ]; then  # never all three suites from scratch
        say "$name: skipped (cifar40-${name#cifar80-} has not finished)"; return
    fi
    if [ -z "$from" ] && [ "${name#cifar160-}" != "$name" ] && [ "${DRY:-}" != 1 ]; then  # nor all four
        say "$name: skipped (cifar80-${name#cifar160-} has not finished)"; return
    fi
    if [ -z "$from" ] && [ "${name#digits320-}" != "$name" ] && [ "${DRY:-}" != 1 ]; then  # nor the three digits suites
        say "$name: skipped (digits160-${name#digits320-} has not finished)"; return
    fi
    if [ -n "$from" ]; then rm -rf "${W:?}/$name"; cp -r "$from" "$W/$name"; resume="--resume"; fi
    if [ -n "$from" ] && [ "$from" != "${RESUME_FROM:-}/$name" ] && [ "${name#cifar40-}" != "$name" ]; then  # ℓ∞ rows only
        $PY scripts/record_tables.py "$W/$name" --keep-linf >> "$W/logs/$name.log" 2>&1 || { say "$name: --keep-linf failed"; return; }
    fi
    say "$name: start ($left s left)${resume:+, resuming}"
    if [ "${DRY:-}" = 1 ]; then say "$name: $PY -m pursamere ensemble $(printf "%q " "$@")--device $DEVICE $resume --out $W/$name"; return; fi
    timeout $(( left + 90 )) $PY -m pursamere ensemble "$@" --device "$DEVICE" --quiet $resume \
        --minutes "$(awk "BEGIN {print $left / 60}")" --out "$W/$name" >> "$W/logs/$name.log" 2>&1
    local rc=$?
    say "$name: exit $rc"
    # finished: exit 0 and not stopped by the deadline (the engine then writes meta "stopped")
    if [ "$rc" = 0 ] && ! grep -q '"stopped":' "$W/$name/results.json" 2> /dev/null; then touch "$W/logs/$name.finished"; fi
}
export -f say ens
if [ -z "${CARRY_TO:-}" ]; then
$PY - <<'PYEOF' 2>&1 | tee "$W/logs/device.txt"
import os, platform, torch
print("torch", torch.__version__, "python", platform.python_version(), "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "cpus", os.cpu_count())
PYEOF
fi

# ---- 1. smoke (a few images, one step per attack, the key rows of both presets)
SMOKE=${SMOKE:-150}  # seconds per smoke run (the CPU rehearsal needs about 300); SMOKE=0: no smoke at all
if [ "$SMOKE" = 0 ]; then say "smoke: not run (SMOKE=0; a job that fails early ends its slot, not the call)"
else
say "smoke"
export DEADLINE=$(( $(date +%s) + SMOKE ))
[ "$DEADLINE" -gt $(( T0 + SECONDS_TOTAL - 100 )) ] && DEADLINE=$(( T0 + SECONDS_TOTAL - 100 ))
ens smoke-cifar --preset cifar10-cpu --data-root "$DATA" --n 4 --steps 1 --part key
export DEADLINE=$(( $(date +%s) + SMOKE ))
[ "$DEADLINE" -gt $(( T0 + SECONDS_TOTAL - 100 )) ] && DEADLINE=$(( T0 + SECONDS_TOTAL - 100 ))
ens smoke-digits --preset digits --weights shipped --n 8 --steps 1 --eps 0.2 --then-steps 4
if [ "${SKIP_SMOKE:-}" = 1 ]; then say "smoke results ignored (SKIP_SMOKE=1: rehearsal of the queue)"
elif ! grep -q "smoke-cifar: exit 0" "$W/logs/status" || ! grep -q "smoke-digits: exit 0" "$W/logs/status"; then
    say "smoke failed: stopping"; tail -n 30 "$W"/logs/smoke-*.log; pack; exit 1
fi
fi

# ---- 2. the jobs
# DT: the digits160-* jobs, the 160-step suite on the 80-step suite's survivors (chapter 7), at ℓ∞ 0.2 and 0.15,
# and PurSAMERE at 0.1; DT2: digits320-0.2-ere, then the 320-step suite on what both left
# CT: the cifar40-* jobs, the 40-step suite on the 20-step suite's survivors, at ℓ∞ 8/255
if [ "$TINY" = tiny ]; then CN=4; CR=2; DN=8; CS="--steps 1"; CSS="--steps 2"; CT="--then-steps 4"; CT2="--then-steps 4,8"; CT3="--then-steps 4,8,16"; DS="--steps 1"; DSS="--steps 2 --restarts 2"; DT="--then-steps 4"; DT2="--then-steps 4,8"
else CN=256; CR=128; DN=476; CS=""; CSS="--strong"; CT="--then-steps 40"; CT2="--then-steps 40,80"; CT3="--then-steps 40,80,160"; DS="--steps 80"; DSS="--steps 160 --restarts 2"; DT="--then-steps 160"; DT2="--then-steps 160,320"; fi
export DEADLINE=$(( T0 + SECONDS_TOTAL - 100 ))
say "jobs: $PARALLEL at a time for $(( DEADLINE - $(date +%s) )) s"
if command -v nvidia-smi > /dev/null && [ -z "${CARRY_TO:-}" ]; then
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 15 > "$W/logs/gpu.csv" 2>&1 &
    SMI=$!
fi
C="--preset cifar10-cpu --data-root $DATA --batch-size 128"
D="--preset digits --weights shipped --n $DN --batch-size 512"
cat > "$W/jobs.txt" <<JOBS
ens cifar-rest-pursamere $C --n $CR --part rest $CS --only PurSAMERE --purifier-classifier clean; ens cifar40-rest-pursamere $C --n $CR --part rest $CS $CT --only PurSAMERE --purifier-classifier clean
ens cifar-ere $C --n $CN --part key $CS --only 'ERE descent' --purifier-classifier clean
ens digits160-0.2-ere $D $DS $DT --eps 0.2 --only 'ERE descent (no SAM) ε_pur=0.3'; ens digits320-0.2-ere $D $DS $DT2 --eps 0.2 --only 'ERE descent (no SAM) ε_pur=0.3'
ens digits160-0.2-at-ere $D $DS $DT --eps 0.2 --only 'PGD-AT + ERE descent (no SAM) ε_pur=0.3'
ens digits160-0.15-ere $D $DS $DT --eps 0.15 --only 'ERE descent (no SAM) ε_pur=0.3'
ens digits160-0.15-at-ere $D $DS $DT --eps 0.15 --only 'PGD-AT + ERE descent (no SAM) ε_pur=0.3'
ens digits160-0.15-pursamere $D $DS $DT --eps 0.15 --only PurSAMERE
ens digits160-0.1-pursamere $D $DS $DT --eps 0.1 --only PurSAMERE
ens cifar-eq17-ere $C --n $CN --part key $CS --only 'ERE descent' --purifier-classifier eq17
ens cifar-eq17-pursamere $C --n $CN --part key $CS --only PurSAMERE --purifier-classifier eq17
ens digits160-0.15-diffpure $D $DS $DT --eps 0.15 --only DiffPure-style
ens cifar-rest-at $C --n $CR --part rest $CS --only adversarial
ens cifar40-diffpure $C --n $CN --part key $CS $CT --only DiffPure-style --purifier-classifier clean; ens cifar80-diffpure $C --n $CN --part key $CS $CT2 --only DiffPure-style --purifier-classifier clean; ens cifar160-diffpure $C --n $CN --part key $CS $CT3 --only DiffPure-style --purifier-classifier clean
ens digits160-0.2-pursamere $D $DS $DT --eps 0.2 --only PurSAMERE
ens digits160-0.2-plain $D $DS $DT --eps 0.2 --only 'undefended,adversarial training,TRADES'
ens digits160-0.2-adp $D $DS $DT --eps 0.2 --only ADP
ens digits160-0.2-diffpure $D $DS $DT --eps 0.2 --only DiffPure-style
ens digits160-0.15-plain $D $DS $DT --eps 0.15 --only 'undefended,adversarial training,TRADES'
ens digits160-0.15-adp $D $DS $DT --eps 0.15 --only ADP
ens cifar-pursamere $C --n $CN --part key $CS --only PurSAMERE --purifier-classifier clean; ens cifar40-pursamere $C --n $CN --part key $CS $CT --only PurSAMERE --purifier-classifier clean; ens cifar80-pursamere $C --n $CN --part key $CS $CT2 --only PurSAMERE --purifier-classifier clean; ens cifar160-pursamere $C --n $CN --part key $CS $CT3 --only PurSAMERE --purifier-classifier clean
ens cifar40-ere $C --n $CN --part key $CS $CT --only 'ERE descent' --purifier-classifier clean; ens cifar80-ere $C --n $CN --part key $CS $CT2 --only 'ERE descent' --purifier-classifier clean; ens cifar160-ere $C --n $CN --part key $CS $CT3 --only 'ERE descent' --purifier-classifier clean
ens digits-0.2-diffpure $D $DS --eps 0.2 --only DiffPure-style
ens digits-0.2-adp $D $DS --eps 0.2 --only ADP
ens digits-0.1-ere $D $DS --eps 0.1 --only 'ERE descent (no SAM) ε_pur=0.3'
ens digits-0.15-ere $D $DS --eps 0.15 --only 'ERE descent (no SAM) ε_pur=0.3'
ens digits-0.1-pursamere $D $DS --eps 0.1 --only PurSAMERE
ens digits-0.15-pursamere $D $DS --eps 0.15 --only PurSAMERE
ens digits-0.1-at-ere $D $DS --eps 0.1 --only 'PGD-AT + ERE descent (no SAM) ε_pur=0.3'
ens digits-0.15-at-ere $D $DS --eps 0.15 --only 'PGD-AT + ERE descent (no SAM) ε_pur=0.3'
ens cifar-rest-baselines $C --n $CR --part rest $CS --only 'ADP,DiffPure-style' --purifier-classifier clean
ens digits-0.1-diffpure $D $DS --eps 0.1 --only DiffPure-style
ens digits-0.15-diffpure $D $DS --eps 0.15 --only DiffPure-style
ens digits-0.1-adp $D $DS --eps 0.1 --only ADP
ens digits-0.15-adp $D $DS --eps 0.15 --only ADP
ens digits-0.2-ere-strong $D $DSS --eps 0.2 --only 'ERE descent (no SAM) ε_pur=0.3'
ens cifar-ere-strong $C --n $CN --part key $CSS --only 'ERE descent' --purifier-classifier clean
ens cifar-at-strong $C --n $CN --part key $CSS --only adversarial
ens cifar40-at $C --n $CN --part key $CS $CT --only adversarial; ens cifar80-at $C --n $CN --part key $CS $CT2 --only adversarial; ens cifar160-at $C --n $CN --part key $CS $CT3 --only adversarial
ens cifar40-plain $C --n $CN --part key $CS $CT --only undefended; ens cifar80-plain $C --n $CN --part key $CS $CT2 --only undefended; ens cifar160-plain $C --n $CN --part key $CS $CT3 --only undefended
ens cifar-plain $C --n $CN --part key $CS --only undefended
ens cifar-at $C --n $CN --part key $CS --only adversarial
ens cifar-diffpure $C --n $CN --part key $CS --only DiffPure-style --purifier-classifier clean
ens digits-0.2-ere $D $DS --eps 0.2 --only 'ERE descent (no SAM) ε_pur=0.3'
ens digits-0.2-pursamere $D $DS --eps 0.2 --only PurSAMERE
ens digits-0.2-plain $D $DS --eps 0.2 --only 'undefended,adversarial training,TRADES'
ens digits-0.2-at-ere $D $DS --eps 0.2 --only 'PGD-AT + ERE descent (no SAM) ε_pur=0.3'
ens digits-0.1-plain $D $DS --eps 0.1 --only 'undefended,adversarial training,TRADES'
ens digits-0.15-plain $D $DS --eps 0.15 --only 'undefended,adversarial training,TRADES'
JOBS
head -n "${JOBS_FIRST:-100000}" "$W/jobs.txt" | xargs -P "$PARALLEL" -d '\n' -I{} bash -c '{}'
[ -n "${SMI:-}" ] && kill "$SMI" 2> /dev/null
if [ -n "${CARRY_TO:-}" ]; then say "carried into $CARRY_TO: $(du -sh "$CARRY_TO" | cut -f1)"; exit 0; fi
pack
say "done"
