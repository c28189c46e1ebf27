#!/usr/bin/env bash
# Our CPU engine against llama.cpp on the same GGUF files: decode (llama-bench tg) and prefill
# (llama-bench pp) tok/s per weight type and thread count, and decode's share of the memory read
# bandwidth measured in the same run.
#
#   bench/llamacpp_compare.sh OUT_DIR
#
# llama.cpp is built here for this benchmark only (never a dependency of the project): its source
# is the git bundle inside the npm package node-llama-cpp (3.22.1 ships llama.cpp v0.5.0 of
# 2026-09-28, commit de3ff81), built CPU-only with the CPU's x86 features named explicitly and AMX
# off (GGML_NATIVE=OFF: -march=native would turn AMX on where the CPU has it). Source, build and
# the random bench models are cached in $LLAMACPP_DIR (default build-llamacpp/, git-ignored).
#
# Environment (defaults in brackets):
#   BUILD_DIR [build]           our CMake build; engine_bench and pipeinfer are built there
#   ENGINE_BENCH, PIPEINFER     use these binaries instead (nothing of ours is built then)
#   LLAMACPP_DIR [build-llamacpp]  JOBS [2]
#   TYPES ["f16 q8_0 q4_0 q4_K q6_K"]  THREADS ["1 2"]  PROMPTS [128,512]  GEN [64]  REPS [3]
#   ROUNDS [1]                  repeat everything this many times, ours and llama.cpp back to back
#                               per type and thread count in each round; the report then gives
#                               medians and the median of the per-round ratios (this VM's memory
#                               bandwidth drifts by tens of percent within minutes)
#   N_LAYER [8] N_EMBD [2048] N_FF [5632] N_HEAD [32] N_HEAD_KV [4] N_VOCAB [32000]
#   OURS_COMMIT, OURS_NOTE      what "ours" is, for the record (default: this checkout's commit)
#   OMP_WAIT_POLICY             passed to llama-bench: on a busy machine set PASSIVE, or its
#                               spinning OpenMP threads collapse at 2 threads (see the 2026-12-07
#                               results); it is recorded in env.txt
#
# OUT_DIR gets report.md (the record and the tables), tables.md, env.txt and raw/ (every output as
# printed, uptime before and after each measurement). A run of the defaults took 31.5 minutes
# on 2 busy cores once everything was built (building llama.cpp: about 30 minutes more).
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
RAW=$OUT/raw
mkdir -p "$RAW"

BUILD_DIR=${BUILD_DIR:-$REPO/build}
LLAMACPP_DIR=${LLAMACPP_DIR:-$REPO/build-llamacpp}
JOBS=${JOBS:-2}
TYPES=${TYPES:-"f16 q8_0 q4_0 q4_K q6_K"}
THREADS=${THREADS:-"1 2"}
PROMPTS=${PROMPTS:-128,512}
GEN=${GEN:-64}
REPS=${REPS:-3}
ROUNDS=${ROUNDS:-1}
N_LAYER=${N_LAYER:-8} N_EMBD=${N_EMBD:-2048} N_FF=${N_FF:-5632}
N_HEAD=${N_HEAD:-32} N_HEAD_KV=${N_HEAD_KV:-4} N_VOCAB=${N_VOCAB:-32000}
NODE_LLAMA_CPP_VERSION=3.22.1
LLAMACPP_COMMIT=de3ff815ea7d559ee917f063901b8986f038abc6

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# --- llama.cpp: source from the npm package's git bundle, CPU-only build, AMX off -------------
fetch_llamacpp() {
  local src=$LLAMACPP_DIR/src
  if [[ -d $src/.git ]]; then return; fi
  command -v npm >/dev/null || { echo "npm is needed to fetch llama.cpp's source" >&2; exit 1; }
  local tmp
  tmp=$(mktemp -d)
  log "fetching node-llama-cpp@$NODE_LLAMA_CPP_VERSION (llama.cpp source bundle)"
  (cd "$tmp" && npm pack --silent "node-llama-cpp@$NODE_LLAMA_CPP_VERSION" >/dev/null &&
    tar xzf "node-llama-cpp-$NODE_LLAMA_CPP_VERSION.tgz" package/llama/gitRelease.bundle)
  mkdir -p "$LLAMACPP_DIR"
  git -c advice.detachedHead=false clone --quiet "$tmp/package/llama/gitRelease.bundle" "$src"
  rm -rf "$tmp"
  local got
  got=$(git -C "$src" rev-parse HEAD)
  if [[ $got != "$LLAMACPP_COMMIT" ]]; then
    echo "unexpected llama.cpp commit $got (expected $LLAMACPP_COMMIT)" >&2
    exit 1
  fi
}

# -D options for the x86 features this CPU has; AMX always off.
llamacpp_cpu_options() {
  local flags
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  local opts=(-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
  local pair
  for pair in sse4_2:GGML_SSE42 f16c:GGML_F16C fma:GGML_FMA bmi2:GGML_BMI2 avx:GGML_AVX \
    avx2:GGML_AVX2 avx_vnni:GGML_AVX_VNNI avx512f:GGML_AVX512 avx512vbmi:GGML_AVX512_VBMI \
    avx512_vnni:GGML_AVX512_VNNI avx512_bf16:GGML_AVX512_BF16; do
    if [[ $flags == *" ${pair%%:*} "* ]]; then
      opts+=("-D${pair##*:}=ON")
    else
      opts+=("-D${pair##*:}=OFF")
    fi
  done
  echo "${opts[@]}"
}

build_llamacpp() {
  local b=$LLAMACPP_DIR/build-cpu
  if [[ -x $b/bin/llama-bench ]]; then return; fi
  fetch_llamacpp
  log "building llama.cpp (CPU only, AMX off) in $b"
  # shellcheck disable=SC2046
  cmake -S "$LLAMACPP_DIR/src" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DGGML_BACKEND_DL=OFF -DGGML_OPENMP=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF \
    $(llamacpp_cpu_options) >"$LLAMACPP_DIR/configure.log"
  nice -n 10 ninja -C "$b" -j "$JOBS" llama-bench llama-quantize
}

# --- ours --------------------------------------------------------------------------------------
build_ours() {
  if [[ -n ${ENGINE_BENCH:-} && -n ${PIPEINFER:-} ]]; then return; fi
  if [[ ! -f $BUILD_DIR/CMakeCache.txt ]]; then
    cmake -S "$REPO" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  log "building engine_bench and pipeinfer in $BUILD_DIR"
  cmake --build "$BUILD_DIR" -j "$JOBS" --target engine_bench pipeinfer
  ENGINE_BENCH=${ENGINE_BENCH:-$BUILD_DIR/bin/engine_bench}
  PIPEINFER=${PIPEINFER:-$BUILD_DIR/bin/pipeinfer}
}

# --- the models: one random llama model per type, read by both engines -------------------------
SHAPE="l${N_LAYER}-e${N_EMBD}-ff${N_FF}-h${N_HEAD}-kv${N_HEAD_KV}-v${N_VOCAB}"
model_path() { echo "$LLAMACPP_DIR/models/bench-$SHAPE-$1.gguf"; }
make_models() {
  mkdir -p "$LLAMACPP_DIR/models"
  local t
  for t in $TYPES; do
    local m
    m=$(model_path "$t")
    [[ -f $m ]] && continue
    log "writing $m"
    "$PIPEINFER" gguf synth -o "$m.tmp" --type "$t" --n-layer "$N_LAYER" --n-embd "$N_EMBD" \
      --n-ff "$N_FF" --n-head "$N_HEAD" --n-head-kv "$N_HEAD_KV" --n-vocab "$N_VOCAB" \
      --n-ctx 4096 --seed 1
    mv "$m.tmp" "$m"
  done
}

build_llamacpp
build_ours
make_models
LLAMA_BENCH=$LLAMACPP_DIR/build-cpu/bin/llama-bench

# --- the record of the machine and the versions -------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command: $0 $* (TYPES='$TYPES' THREADS='$THREADS' PROMPTS=$PROMPTS GEN=$GEN REPS=$REPS ROUNDS=$ROUNDS)"
  if [[ -n ${OURS_COMMIT:-} ]]; then
    echo "ours: $OURS_COMMIT"
  else
    echo "ours: $(git -C "$REPO" rev-parse HEAD)$(git -C "$REPO" diff --quiet HEAD -- libs bench \
      2>/dev/null || echo ' + uncommitted changes in libs/ or bench/')"
  fi
  echo "ours note: ${OURS_NOTE:-}"
  echo "engine_bench: $ENGINE_BENCH"
  echo "llama.cpp: $(git -C "$LLAMACPP_DIR/src" rev-parse HEAD) (node-llama-cpp $NODE_LLAMA_CPP_VERSION bundle)"
  echo "llama.cpp build: $(grep -E '^GGML_(NATIVE|AVX[A-Z0-9_]*|AMX[A-Z_]*|F16C|FMA|BMI2|SSE42|OPENMP):' \
    "$LLAMACPP_DIR/build-cpu/CMakeCache.txt" | sed 's/:BOOL//' | tr '\n' ' ')"
  echo "OMP_WAIT_POLICY: ${OMP_WAIT_POLICY:-unset} (llama.cpp's OpenMP threads; ours poll for at most 100 us between kernel calls, then sleep)"
  echo "model shape: $SHAPE (random weights, pipeinfer gguf synth --seed 1)"
  if grep -qw amx_int8 /proc/cpuinfo; then
    echo "AMX: this CPU has AMX (the tables use the AMX-off build)"
  else
    echo "AMX: this CPU has no AMX, so an AMX build of llama.cpp is n/a here"
  fi
  echo "uptime before: $(uptime)"
  echo "--- lscpu"
  lscpu
} >"$OUT/env.txt"

# --- the measurements: per type and thread count, ours then llama.cpp, uptime around each -------
: >"$RAW/uptime.txt"
for round in $(seq "$ROUNDS"); do
  : >"$RAW/ours-r$round.jsonl"
  for t in $TYPES; do
    m=$(model_path "$t")
    for th in $THREADS; do
      tag="$t-t$th-r$round"
      echo "$tag ours before: $(uptime)" >>"$RAW/uptime.txt"
      log "round $round/$ROUNDS, ours: $t, $th thread(s)"
      "$ENGINE_BENCH" --model "$m" --threads "$th" --prefill "$PROMPTS" --gen "$GEN" \
        --reps "$REPS" --json "$RAW/ours-r$round.jsonl" >"$RAW/ours-$tag.md" 2>"$RAW/ours-$tag.err"
      echo "$tag ours after / llama.cpp before: $(uptime)" >>"$RAW/uptime.txt"
      log "round $round/$ROUNDS, llama.cpp: $t, $th thread(s)"
      "$LLAMA_BENCH" -m "$m" -t "$th" -p "$PROMPTS" -n "$GEN" -r "$REPS" -o json \
        >"$RAW/llamacpp-$tag.json" 2>"$RAW/llamacpp-$tag.err"
      echo "$tag llama.cpp after: $(uptime)" >>"$RAW/uptime.txt"
    done
  done
done
echo "uptime after: $(uptime)" >>"$OUT/env.txt"

# --- the report -----------------------------------------------------------------------------------
python3 - "$OUT" "$TYPES" "$THREADS" "$ROUNDS" <<'EOF'
import json, os, statistics, sys
out, types = sys.argv[1], sys.argv[2].split()
threads, rounds = [int(x) for x in sys.argv[3].split()], int(sys.argv[4])
raw = os.path.join(out, "raw")
# (type, threads, test) -> one record per round, from ours and from llama.cpp
ours, llama = {}, {}
for rnd in range(1, rounds + 1):
    for line in open(os.path.join(raw, f"ours-r{rnd}.jsonl")):
        r = json.loads(line)
        t = os.path.basename(r["model"]).rsplit("-", 1)[1].removesuffix(".gguf")
        ours.setdefault((t, r["threads"], r["test"]), {})[rnd] = r
    for t in types:
        for th in threads:
            f = os.path.join(raw, f"llamacpp-{t}-t{th}-r{rnd}.json")
            if not os.path.exists(f) or os.path.getsize(f) == 0:
                continue
            for r in json.load(open(f)):
                test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
                llama.setdefault((t, th, test), {})[rnd] = r

def summary(v, digits, range_digits, suffix=""):
    # One round: the value; several: their median and (lowest-highest).
    med = f"{statistics.median(v):.{digits}f}{suffix}"
    return med if rounds == 1 else f"{med} ({min(v):.{range_digits}f}-{max(v):.{range_digits}f})"

def fmt(rs):
    if not rs:
        return "n/a"
    if rounds == 1:
        r = next(iter(rs.values()))
        return f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}"
    return summary([r["avg_ts"] for r in rs.values()], 2, 1)

tests = sorted({k[2] for k in ours}, key=lambda s: (s[:2] != "tg", int(s[2:])))
lines = []
if rounds > 1:
    lines.append(f"\n{rounds} rounds; in each, ours and llama.cpp ran back to back for every type and "
                 "thread count. Speeds: median of the rounds' means (lowest-highest). "
                 "Ratios: median of the rounds' ratios (lowest-highest), each ratio from one "
                 "back-to-back pair, so a slow phase of the machine hits both sides.\n")
for test in tests:
    decode = test.startswith("tg")
    what = "decode" if decode else "prefill"
    unit = "mean ± sd of the repetitions" if rounds == 1 else f"median of {rounds} rounds"
    lines.append(f"\n### {what} `{test}` (tokens/s, {unit})\n")
    head = f"| type | threads | ours | llama.cpp | ours / llama.cpp |"
    sep = "|---|--:|--:|--:|--:|"
    if decode:
        head += " ours % of bandwidth | llama.cpp % of bandwidth | bandwidth GB/s | weights MB/token |"
        sep += "--:|--:|--:|--:|"
    lines += [head, sep]
    for t in types:
        for th in threads:
            o, l = ours.get((t, th, test), {}), llama.get((t, th, test), {})
            both = sorted(set(o) & set(l))
            ratios = [o[k]["avg_ts"] / l[k]["avg_ts"] for k in both]
            ratio = summary(ratios, 2, 2, "×") if ratios else "n/a"
            row = f"| {t} | {th} | {fmt(o)} | {fmt(l)} | {ratio} |"
            if decode and o:
                # Each side's share of the bandwidth measured in the same round by engine_bench.
                def share(side):
                    v = [side[k]["avg_ts"] * o[k]["bytes_per_token"] / o[k]["bandwidth_bytes_per_s"]
                         for k in sorted(side) if k in o]
                    return f"{100 * statistics.median(v):.0f}%" if v else "n/a"
                bw = summary([r["bandwidth_bytes_per_s"] / 1e9 for r in o.values()], 1, 1)
                bpt = next(iter(o.values()))["bytes_per_token"]
                row += f" {share(o)} | {share(l)} | {bw} | {bpt / 1e6:.0f} |"
            lines.append(row)
tables = "\n".join(lines).lstrip("\n") + "\n"
open(os.path.join(out, "tables.md"), "w").write(tables)
env_text = open(os.path.join(out, "env.txt")).read()
env = env_text.split("--- lscpu")[0] + "".join(
    l + "\n" for l in env_text.splitlines() if l.startswith(("Model name", "Flags", "uptime after")))
open(os.path.join(out, "report.md"), "w").write(
    "# Ours vs llama.cpp on the same files\n\n```\n" + env + "```\n\n" + tables)
EOF
find "$RAW" -type f -size 0 -delete  # stderr files with nothing in them
log "done: $OUT/report.md (tables.md, env.txt, raw/)"
