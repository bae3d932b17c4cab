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

# Figures: meta-training curves straight from the result folders, then the notebooks in full mode.
$LK figures results/fa_lr results/bp_lr results/dfa_lr results/usf_lr results/frsf_lr results/drtp_lr \
    --labels FA BP DFA uSF frSF DRTP --out figures --prefix fig3_
$LK figures results/bio results/usf_bio results/frsf_bio results/drtp_bio \
    --labels "bio, FA" "bio, uSF" "bio, frSF" "bio, DRTP" --out figures --prefix pathways_bio_
# Fig 4 from the paper-scale runs (20 trials x 600 episodes) where present; they take ~30 min each
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
P=results/pool; B=results/bio
[ -f results/pool_20x600/theta.json ] && P=results/pool_20x600
[ -f results/bio_20x600/theta.json ] && B=results/bio_20x600
$LK figures results/fa_lr results/bp_lr $P $B --labels FA BP pool bio --out figures --prefix fig4_
[ -f results/pool_20x600/theta.json ] && $LK figures results/pool_20x600 --labels "pool 20x600" --out figures --prefix pool20x600_
[ -f results/bio_20x600/theta.json ] && $LK figures results/bio_20x600 --labels "bio 20x600" --out figures --prefix bio20x600_
$LK figures results/fa_lr results/ehebb results/bio --labels FA eHebb bio --out figures --prefix fig5_
$LK figures results/fa_lr results/oja --labels FA Oja --out figures --prefix fig7_
# The committed notebooks stay output-free; executed copies go to a temporary folder.
executed=$(mktemp -d)
for nb in notebooks/0[1-4]_*.ipynb; do
    (cd notebooks && ../.venv/bin/papermill "$(basename "$nb")" "$executed/$(basename "$nb")" -k python3 --cwd .)
done
echo "figures in figures/; executed notebooks in $executed"
