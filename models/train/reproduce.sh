#!/bin/sh
# Rebuild everything shipped under models/ and tests/fixtures/demo/ from Debian packages.
# Deterministic given the seeds below, the thread count (1) and the same torch/OpenBLAS builds
# (Debian 12: python3-torch 1.13.1+dfsg-4, libopenblas0-pthread 0.3.21).
#
#   apt-get install -y --no-install-recommends python3-torch python3-numpy r-cran-janeaustenr \
#       sentencepiece python3-sentencepiece libopenblas0-pthread
#
# The schedule is the one the shipped models went through (see ../README.md, "Training"):
#   1. target: 1500 steps (warmup-stable-decay, cooled down at the end); snapshot -> work/target_1500.pt
#   2. target: resumed to TARGET_STEPS (the LR goes back up to the peak at step 1500 and cools down again over the
#      last 20% of TARGET_STEPS); in parallel the draft is distilled from the snapshot of step 1
#      (`--teacher work/target_1500.pt`) up to step DRAFT_SWITCH, in its constant-LR phase
#   3. draft: resumed to DRAFT_STEPS, now distilled from the final target (it cools down in this phase)
# Wall time on a shared, busy 2-core CPU box: ~1 h (step 1) + ~1 h (step 2, both runs) + ~30 min (step 3).
set -e
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3
T=models/train
W=$T/work
TARGET_STEPS=${TARGET_STEPS:-2500}
DRAFT_SWITCH=${DRAFT_SWITCH:-1750}
DRAFT_STEPS=${DRAFT_STEPS:-3600}
TARGET_ARGS="--name target --n-embd 256 --n-layer 6 --n-head 8 --n-head-kv 4 --n-ff 704 --ctx 256 --batch 8
    --lr 1.5e-3 --warmup 50 --seed 1234"
DRAFT_ARGS="--name draft_kd --n-embd 128 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 352 --tie --ctx 256 --batch 8
    --lr 3e-3 --warmup 50 --seed 1234 --distill-alpha 0.9 --distill-temp 1.0"

nice -n 19 $PY $T/prepare_corpus.py --seed 1234
$T/train_tokenizer.sh
# 1. the first target run, and the snapshot that teaches the draft's first phase
nice -n 19 $PY $T/train.py $TARGET_ARGS --steps 1500 > $W/target.out 2>&1
cp $W/target/ckpt.pt $W/target_1500.pt
# 2. extend the target; distil the draft from the snapshot meanwhile (each run single-threaded)
nice -n 19 $PY $T/train.py $TARGET_ARGS --steps "$TARGET_STEPS" >> $W/target.out 2>&1 &
nice -n 19 $PY $T/train.py $DRAFT_ARGS --steps "$DRAFT_STEPS" --stop-after "$DRAFT_SWITCH" \
    --teacher $W/target_1500.pt > $W/draft_kd.out 2>&1 &
wait
# 3. finish the draft with the final target as its teacher
nice -n 19 $PY $T/train.py $DRAFT_ARGS --steps "$DRAFT_STEPS" --teacher $W/target/ckpt.pt >> $W/draft_kd.out 2>&1
# (the undistilled baseline draft of the model card, for comparison only:
#  train.py --name draft --n-embd 128 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 352 --tie --ctx 256 --batch 8
#      --steps 1500 --lr 3e-3 --warmup 50 --seed 1234)
nice -n 19 $PY $T/export.py --name target --out-prefix models/demo-target
nice -n 19 $PY $T/export.py --name draft_kd --role draft --out-prefix models/demo-draft
nice -n 19 $PY $T/make_fixtures.py
nice -n 19 $PY $T/evaluate_pair.py
