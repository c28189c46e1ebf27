#!/bin/sh
# Rebuild everything shipped under models/ and tests/fixtures/demo/ from Debian packages.
# Deterministic given the seeds below, the thread count (1) and the same torch/OpenBLAS builds
# (Debian 12: python3-torch 1.13.1+dfsg-4, libopenblas0-pthread 0.3.21).
#
#   apt-get install -y --no-install-recommends python3-torch python3-numpy r-cran-janeaustenr \
#       sentencepiece python3-sentencepiece libopenblas0-pthread
#
# Wall time on a shared 2-core CPU box: ~1 h (target) while the draft trains alongside (~20 min).
set -e
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3
T=models/train
TARGET_STEPS=${TARGET_STEPS:-1500}
DRAFT_STEPS=${DRAFT_STEPS:-1500}

nice -n 19 $PY $T/prepare_corpus.py --seed 1234
$T/train_tokenizer.sh
# the two trainings are independent; run them in parallel (each single-threaded)
nice -n 19 $PY $T/train.py --name target --n-embd 256 --n-layer 6 --n-head 8 --n-head-kv 4 --n-ff 704 \
    --ctx 256 --batch 8 --steps "$TARGET_STEPS" --lr 1.5e-3 --warmup 50 --seed 1234 > $T/work/target.out 2>&1 &
nice -n 19 $PY $T/train.py --name draft --n-embd 128 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 352 --tie \
    --ctx 256 --batch 8 --steps "$DRAFT_STEPS" --lr 3e-3 --warmup 50 --seed 1234 > $T/work/draft.out 2>&1 &
wait
nice -n 19 $PY $T/export.py --name target --out-prefix models/demo-target
nice -n 19 $PY $T/export.py --name draft --out-prefix models/demo-draft
nice -n 19 $PY $T/make_fixtures.py
nice -n 19 $PY $T/evaluate_pair.py
