#!/usr/bin/env bash
# Regenerate every committed result folder (results/) and figure (figures/) from scratch.
#
#   bash scripts/reproduce.sh            # what the committed files were made with
#   TRIALS=20 EPISODES=600 bash scripts/reproduce.sh   # the paper's full protocol
#
# Three queues run side by side with one thread each (on 2 cores this gives ~1.5x the
# throughput of one process with two threads). Each run checkpoints; rerunning the script
# resumes interrupted runs and skips finished ones.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${TRIALS:-8}
EPISODES=${EPISODES:-300}
SEED=${SEED:-0}
POOL_LAMBDA=${POOL_LAMBDA:-}
COMPILE=${COMPILE---compile}  # torch.compile the inner loop (~1.5x faster); COMPILE= to run eager
LK=.venv/bin/labkit

run() {  # [EPISODES=N] run NAME ARGS...: one meta-training run into results/NAME, resumed if interrupted
    local name=$1; shift
    local out=results/$name
    local EPISODES=${RUN_EPISODES:-$EPISODES}
    if [ -f "$out/theta.json" ] && [ -f "$out/checkpoint.pt" ] && \
       .venv/bin/python -c "import json,sys; c=json.load(open('$out/config.json')); sys.exit(0 if c['episodes']==$EPISODES and c['trials']==$TRIALS else 1)" 2>/dev/null && \
       [ "$(tail -n1 "$out/history.csv" | cut -d, -f2)" = "$EPISODES" ]; then
        echo "results/$name is complete"; return
    fi
    local resume=""
    [ -f "$out/checkpoint.pt" ] && resume="--resume"
    $LK discover --trials "$TRIALS" --episodes "$EPISODES" --seed "$SEED" --threads 1 --quiet $COMPILE --out "$out" $resume "$@"
}

queue_a() {
    run pool --rule pool ${POOL_LAMBDA:+--lam "$POOL_LAMBDA"}
    RUN_EPISODES=${DFA_EPISODES:-150} run dfa_lr --rule dfa  # learning rate only converges within ~100 episodes
}
queue_b() {
    run bio --rule bio
    run oja --rule oja
}
queue_c() {
    run fa_lr --rule fa
    run bp_lr --rule bp
    run ehebb --rule ehebb
}
# the pathways added as plug-ins: sign-symmetry (uniform, fixed random magnitude) and direct
# random target projection, each with the learning rate only and with F^bio
queue_d() {
    for fb in usf frsf drtp; do
        run ${fb}_lr --rule fa --feedback "$fb"
        run ${fb}_bio --rule bio --feedback "$fb"
    done
}
mkdir -p results
queue_a > results/queue_a.log 2>&1 &
queue_b > results/queue_b.log 2>&1 &
queue_c > results/queue_c.log 2>&1 &
queue_d > results/queue_d.log 2>&1 &
wait
[ -n "${RUNS_ONLY:-}" ] && exit 0

# The paper-scale runs (20 trials x 600 episodes), which Fig 4 uses where present; they take ~30 min each
# here with 2 workers: PAPER_SCALE=1 bash scripts/reproduce.sh makes them (docs/reproduction.md).
if [ -n "${PAPER_SCALE:-}" ]; then
    for rule in pool bio; do
        out=results/${rule}_20x600; resume=""; extra=""
        [ "$rule" = pool ] && extra="--l1 proximal --lam 0.1"
        [ -f "$out/checkpoint.pt" ] && resume="--resume"
        [ -f "$out/theta.json" ] && [ "$(tail -n1 "$out/history.csv" | cut -d, -f2)" = "600" ] || \
            $LK discover --rule "$rule" --trials 20 --episodes 600 --seed "$SEED" --workers 2 --quiet $COMPILE $extra --out "$out" $resume
    done
fi

# Figures: the meta-training curves from the result folders (labkit figures), then the notebooks
# in full mode (executed copies go to a temporary folder; the committed notebooks stay
# output-free). The list of what makes figures/ is scripts/figures.py; the tests check with it
# that the committed figures are current (scripts/figures.py --check).
.venv/bin/python scripts/figures.py --write
