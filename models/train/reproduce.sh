#!/bin/sh
# Rebuild everything shipped under models/ and tests/fixtures/demo/ from Debian packages.
#
#   apt-get install -y --no-install-recommends python3-torch python3-numpy r-cran-janeaustenr \
#       r-cran-tokenizers bible-kjv bible-kjv-text sentencepiece python3-sentencepiece libopenblas0-pthread
#
# The shipped pair was trained on one NVIDIA H100 (PyTorch 2.11, CUDA 13, bfloat16 autocast) in one session of
# gpu_train.sh; the commands below repeat the chosen runs with their step counts fixed (the session fitted the
# step counts to a time budget, see ../README.md, "Training"). GPU training is not bit-reproducible (bf16
# kernels, atomics): a rerun gives a pair of the same quality, not the same bytes. Everything before and after
# the two GPU steps is deterministic and runs on a CPU. DEVICE=cpu works too (about 100x slower).
set -e
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
T=models/train
W=$T/work
AMP=""
[ "$DEVICE" = cuda ] && AMP=--amp

# corpus, tokenizer (Austen text only) and the token streams
/usr/bin/python3 $T/prepare_corpus.py --seed 1234
/usr/bin/python3 $T/prepare_extra.py --seed 1234
$T/train_tokenizer.sh
/usr/bin/python3 $T/data.py --out $W/gpu_streams                 # Austen + chat pairs
/usr/bin/python3 $T/data.py --extra --out $W/gpu_streams_mix     # + King James Bible + Moby Dick

COMMON="--device $DEVICE $AMP --threads 2 --ctx 256 --batch 64 --seed 1234 --eval-every 100 --ckpt-every 1000000"
# 1. target: 8.97M parameters, Austen + KJV + Moby Dick, dropout 0.2
$PY $T/train.py --name target --streams $W/gpu_streams_mix $COMMON --n-embd 320 --n-layer 6 --n-head 10 \
    --n-head-kv 5 --n-ff 896 --lr 2e-3 --warmup 100 --dropout 0.2 --keep-best --steps 2024 > $W/target.out 2>&1
# 2. 2048 rows of target samples (32-token prompts from the training stream + 128 sampled tokens)
$PY $T/sample_teacher.py --teacher $W/target/model.pt --streams $W/gpu_streams_mix --n-seq 2048 \
    --device $DEVICE $AMP --out $W/synth.npy
# 3. draft: 0.95M parameters, distilled from the target on the Austen stream and the target's samples
$PY $T/train.py --name draft --streams $W/gpu_streams $COMMON --n-embd 128 --n-layer 3 --n-head 4 --n-head-kv 2 \
    --n-ff 352 --tie --lr 3e-3 --warmup 100 --steps 1860 --teacher $W/target/model.pt --distill-alpha 0.9 \
    --distill-temp 1.0 --synth $W/synth.npy --synth-batch 32 > $W/draft.out 2>&1

/usr/bin/python3 $T/export.py --name target --ckpt $W/target/model.pt --out-prefix models/demo-target
/usr/bin/python3 $T/export.py --name draft --ckpt $W/draft/model.pt --out-prefix models/demo-draft
/usr/bin/python3 $T/make_fixtures.py
/usr/bin/python3 $T/evaluate_pair.py
