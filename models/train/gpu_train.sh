#!/bin/bash
# The demo pair's GPU training session, in one command (4-8 minutes on one H100):
#   1. target runs at once (TARGET_SPECS: dropout / length sweep), each fitted to TARGET_BUDGET seconds of
#      training, evaluated on the whole (Austen) validation set every 100 steps, best model kept;
#   2. the target with the lowest validation loss writes SYNTH_ROWS sampled rows (sample_teacher.py);
#   3. drafts (DRAFT_SPECS) distilled from it at once, on their data and on its samples.
# Inputs: pre-tokenized streams (python3 models/train/data.py [--extra] --out models/train/work/gpu_streams).
# Outputs in $OUT (default models/train/work/gpu_out): summary.txt, logs.tar, target.tar.* (the chosen
# target's model.pt, split in 15 MB parts), drafts.tar (each draft's model.pt and result.json).
# Reassemble with: cat target.tar.* | tar x; tar xf drafts.tar  (see models/README.md, "Training").
# DEVICE=cpu with tiny budgets is the dry run that checks this script on a machine without a GPU.
set -u
cd "$(dirname "$0")/../.."
T=models/train
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$T/work/gpu_out}
W=${WORK:-/tmp/pipeinfer-gpu-train}
STREAMS=${STREAMS:-$T/work/gpu_streams}          # the targets' training data
# "name:dropout:steps" per target run, "name:layers:streams-dir" per draft run
TARGET_SPECS=${TARGET_SPECS:-t_d10_2k:0.1:2000 t_d20_3k:0.2:3000 t_d25_6k:0.25:6000 t_d35_6k:0.35:6000}
DRAFT_SPECS=${DRAFT_SPECS:-d_l2:2:$STREAMS d_l3:3:$STREAMS}
TARGET_BUDGET=${TARGET_BUDGET:-220}
DRAFT_BUDGET=${DRAFT_BUDGET:-150}
SYNTH_ROWS=${SYNTH_ROWS:-4096}
BATCH=${BATCH:-64}
SCALE=${SCALE:-1}              # dry run: divides step counts
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1
AMP=""
[ "$DEVICE" = cuda ] && AMP=--amp
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/summary.txt"; }

log "device: $DEVICE"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
fi
$PY -c 'import torch, numpy, sentencepiece; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' \
  | tee -a "$OUT/summary.txt" || exit 1

COMMON="--device $DEVICE $AMP --threads 2 --ctx 256 --batch $BATCH --seed 1234
  --eval-every $((100 / SCALE)) --ckpt-every 1000000 --measure-steps $((40 / SCALE))"
TARGET="--n-embd 320 --n-layer 6 --n-head 10 --n-head-kv 5 --n-ff 896 --lr 2e-3 --warmup $((100 / SCALE))
  --keep-best --time-budget $TARGET_BUDGET"

# ---- 1. targets -------------------------------------------------------------------------------------
NAMES=""
for spec in $TARGET_SPECS; do
  IFS=: read -r name dropout steps <<< "$spec"
  NAMES="$NAMES $name"
  $PY $T/train.py --name "$name" --workdir "$W/$name" --streams "$STREAMS" $COMMON $TARGET --dropout "$dropout" \
    --steps $((steps / SCALE)) > "$W/$name.out" 2>&1 &
done
wait
best_name="" best_file="" best_val=""
for name in $NAMES; do
  r=$(tail -n 1 "$W/$name.out")
  log "$name: $r"
  for f in model.pt best.pt; do
    [ -f "$W/$name/$f" ] || continue
    v=$($PY -c "import torch,sys; print(torch.load(sys.argv[1], map_location='cpu', weights_only=False)['val_loss'])" \
      "$W/$name/$f") || continue
    log "  $name/$f val_loss $v"
    if [ -z "$best_val" ] || $PY -c "import sys; sys.exit(0 if $v < $best_val else 1)"; then
      best_name=$name best_file=$W/$name/$f best_val=$v
    fi
  done
done
[ -n "$best_file" ] || { log "no target finished"; tar cf "$OUT/logs.tar" -C "$W" --exclude='*.pt' .; exit 1; }
log "chosen target: $best_file (val_loss $best_val)"
mkdir -p "$W/pack/target"
cp "$best_file" "$W/pack/target/model.pt"
cp "$W/$best_name/result.json" "$W/$best_name/log.jsonl" "$W/pack/target/" 2>/dev/null
echo "$best_file" > "$W/pack/target/chosen.txt"
tar cf - -C "$W/pack" target | split -b 15M -d - "$OUT/target.tar."
tar cf "$OUT/logs.tar" -C "$W" --exclude='*.pt' --exclude='*.npy' --exclude=pack .

# ---- 2. teacher samples -----------------------------------------------------------------------------
$PY $T/sample_teacher.py --teacher "$W/pack/target/model.pt" --streams "$STREAMS" --out "$W/synth.npy" \
  --n-seq "$SYNTH_ROWS" --device "$DEVICE" $AMP --threads 2 2>&1 | tee -a "$OUT/summary.txt"
SYNTH="--synth $W/synth.npy --synth-batch $((BATCH / 2))"
[ -f "$W/synth.npy" ] || SYNTH=""

# ---- 3. drafts --------------------------------------------------------------------------------------
DRAFT="--n-embd 128 --n-head 4 --n-head-kv 2 --n-ff 352 --tie --lr 3e-3 --warmup $((100 / SCALE))
  --steps $((20000 / SCALE)) --time-budget $DRAFT_BUDGET --teacher $W/pack/target/model.pt
  --distill-alpha 0.9 --distill-temp 1.0"
NAMES=""
for spec in $DRAFT_SPECS; do
  IFS=: read -r name layers streams <<< "$spec"
  NAMES="$NAMES $name"
  $PY $T/train.py --name "$name" --workdir "$W/$name" --streams "$streams" $COMMON $DRAFT $SYNTH \
    --n-layer "$layers" > "$W/$name.out" 2>&1 &
done
wait
mkdir -p "$W/pack/drafts"
for name in $NAMES; do
  log "$name: $(tail -n 1 "$W/$name.out")"
  mkdir -p "$W/pack/drafts/$name"
  cp "$W/$name/model.pt" "$W/$name/result.json" "$W/$name/log.jsonl" "$W/pack/drafts/$name/" 2>/dev/null
  [ -f "$W/$name/result.json" ] && $PY -c "import json,sys; r=json.load(open(sys.argv[1])); \
print('  val_loss %.4f bpb %.4f teacher_agreement %.4f steps %d' % (r['val_loss'], r['val_bpb'], \
r['teacher_agreement'], r['step']))" "$W/$name/result.json" | tee -a "$OUT/summary.txt"
done
tar cf "$OUT/drafts.tar" -C "$W/pack" drafts
tar cf "$OUT/logs.tar" -C "$W" --exclude='*.pt' --exclude='*.npy' --exclude=pack .
log "done"
