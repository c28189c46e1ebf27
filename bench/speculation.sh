#!/bin/bash
# The speculation benchmark of the dynamic token tree (docs/speculation.md): one request at a time,
# stages emulated at 10 ms + 0.5 ms per token (--emulate-*: benchmarks only), every mode and
# ablation side by side on the same cluster, greedy tokens checked identical in every table.
#
#   bench/speculation.sh OUT_DIR            # all rows (about 15 minutes on 2 vCPUs; root for link10)
#   bench/speculation.sh OUT_DIR demo6      # one row: demo6 | oracle8-a08 | oracle8-a01 | link10
#
# Rows:
#   demo6        6 stages, the bundled demo pair (configs/local-2stage.yaml), 64 tokens x 6 prompts:
#                default knobs (self-tuned), then the same cluster with --draft-max 4 --p-accept 0.02
#   oracle8-a08  8 stages, the synthetic 16-layer model as its own draft at agreement 0.8
#                (--draft-noise 0.2, docs/draft-emulation.md), 48 tokens x 6 prompts: forced knobs
#                --draft-max 4 --p-accept 0.02, then default knobs
#   oracle8-a01  the same at agreement 0.1 (--draft-noise 0.9), forced knobs
#   link10       oracle8-a08 over links rate-limited to 10 Mbit/s (network namespaces: root)
# Each table goes to OUT_DIR/<row>-<knobs>.md (and .json); OUT_DIR/machine.txt records the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/speculation.sh OUT_DIR [ROW]}
ONLY=${2:-}
BIN=${BIN:-build/bin}
PI="$BIN/pipeinfer"
mkdir -p "$OUT"
STATE="$OUT/cluster.json"
SYNTH="$OUT/synth16-light.gguf"
EMU=(--emulate-run-us 10000 --emulate-token-us 500)
PORTS=(--base-port 52000 --http-port 52080 --grpc-port 52090 --metrics-base-port -1)

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "nproc: $(nproc)"
} >"$OUT/machine.txt"

down() { "$PI" down --state "$STATE" >/dev/null 2>&1 || true; }
trap down EXIT

up() {  # up NAME ARGS...
  local name=$1
  shift
  down
  "$PI" up "$@" "${EMU[@]}" "${PORTS[@]}" --detach --state "$STATE" --log-dir "$OUT/logs-$name" \
    >"$OUT/up-$name.log" 2>&1
}

bench() {  # bench FILE ARGS...
  local file=$1
  shift
  "$PI" bench --router 127.0.0.1:52090 --repeat 1 --stats "$@" --out "$OUT/$file.md" \
    --json "$OUT/$file.json" >/dev/null
  grep -E '^\| (mode|plain|sync|pipeinfer)|identical' "$OUT/$file.md" | cut -d'|' -f2-8
}

want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

oracle() {  # oracle NAME NOISE [up args...]
  local name=$1 noise=$2
  shift 2
  [ -f "$SYNTH" ] || "$PI" gguf synth --out "$SYNTH" --type q8_0 --n-layer 16 --n-embd 128 \
    --n-ff 352 --n-head 4 --n-head-kv 4 --n-vocab 512 --n-ctx 512 --seed 7 >/dev/null
  up "$name" --model "$SYNTH" --draft-model "$SYNTH" --draft-noise "$noise" --mode pipeinfer \
    --stages 8 "$@"
}

FORCED=(--draft-max 4 --p-accept 0.02)

if want demo6; then
  echo "== demo6: 6 stages, bundled pair"
  up demo6 --config configs/local-2stage.yaml --stages 6
  bench demo6-default -n 64 --modes plain,sync,pipeinfer --ablations
  bench demo6-forced -n 64 --modes plain,sync,pipeinfer --ablations "${FORCED[@]}"
fi
if want oracle8-a08; then
  echo "== oracle8-a08: 8 stages, oracle draft at agreement 0.8"
  oracle oracle8-a08 0.2
  bench oracle8-a08-forced -n 48 --modes plain,sync,pipeinfer --ablations "${FORCED[@]}"
  bench oracle8-a08-default -n 48 --modes plain,sync,pipeinfer
fi
if want oracle8-a01; then
  echo "== oracle8-a01: 8 stages, oracle draft at agreement 0.1"
  oracle oracle8-a01 0.9
  bench oracle8-a01-forced -n 48 --modes plain,sync,pipeinfer --ablations "${FORCED[@]}"
fi
if want link10; then
  echo "== link10: oracle8-a08 over 10 Mbit/s links"
  oracle link10 0.2 --emulate-link-mbps 10
  bench link10-default -n 48 --modes plain,sync,pipeinfer
  bench link10-forced -n 48 --modes plain,sync,pipeinfer --ablations "${FORCED[@]}"
fi
