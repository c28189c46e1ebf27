#!/usr/bin/env bash
# The GPU check of issue 16, in one run on a GPU machine (H100/H200, 16 cores; docs/gpu.md):
#   1. the device, driver and CUDA libraries found;
#   2. the binaries: a build here when this project's libraries are installed (16 cores), else the
#      bundle that scripts/gpu-bundle.sh packed on a development machine (.gpu-bundle/, carried);
#   3. the cuda tests: kernels against CPU references (cuda_ops_test), GPU stages against
#      llama.cpp's logits, KV operations and tensor parallelism (engine_cuda_test), and a 2-stage
#      cluster with a GPU stage against the CPU cluster (gpu_stage_test);
#   4. engine_bench on a GPU stage: decode GB/s against the HBM bandwidth measured by a copy in the
#      same run (at contexts below 128 tokens, then below 2048), and prefill TFLOP/s, on 7B-shaped synthetic layers (n_embd 4096, n_ff 11008,
#      32 heads; 4 layers, to keep the model files small) in F16 and Q4_K.
# Everything goes to $OUT (the device tool's result folder; ./gpu-check-out elsewhere):
# gpu-check.md (the report) and gpu-check.log (everything printed).
#
#   ./scripts/gpu-check.sh [--quick]      --quick: tests only, no bench
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
OUT=${OUT:-$root/gpu-check-out}
mkdir -p "$OUT"
report=$OUT/gpu-check.md
exec > >(tee "$OUT/gpu-check.log") 2>&1
quick=0
[[ ${1:-} == --quick ]] && quick=1
start=$(date +%s)
say() { echo "$*" | tee -a "$report"; }
: > "$report"
say "# GPU check, $(date -u +%FT%TZ)"
say ""
say "- device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
say "- host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

# CUDA libraries: the toolkit's, or the ones pip installed for PyTorch.
cuda_libs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, x, "lib") for p in nvidia.__path__ for x in os.listdir(p)))' 2>/dev/null); do
  [[ -d $d ]] && cuda_libs=$cuda_libs:$d
done
for lib in libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
  found=$(for d in ${cuda_libs//:/ }; do ls "$d/$lib" 2>/dev/null; done | head -1)
  say "- $lib: ${found:-NOT FOUND}"
done

# The binaries.
if cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPIPEINFER_CUDA=ON \
  -DPIPEINFER_NCCL=ON -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure.log" 2>&1; then
  say "- binaries: built here (build-cuda, $(nproc) jobs)"
  cmake --build build-cuda -j "$(nproc)" --target pipeinfer pipeinfer-stage pipeinfer-draft \
    pipeinfer-router engine_bench cuda_ops_test engine_cuda_test gpu_stage_test || exit 1
  bin=$root/build-cuda/bin
  export PIPEINFER_FIXTURES_DIR=$root/tests/fixtures
elif [[ -f .gpu-bundle/bundle.tar.xz ]]; then
  b=/tmp/pipeinfer-gpu-bundle
  rm -rf "$b" && mkdir -p "$b" && tar -C "$b" -xJf .gpu-bundle/bundle.tar.xz || exit 1
  say "- binaries: .gpu-bundle ($(head -1 "$b/BUILD")); this machine cannot build" \
    "(configure: $(grep -m1 -i 'could not\|not found' "$OUT/configure.log" | head -c 160))"
  bin=$b/bin
  export LD_LIBRARY_PATH=$b/lib${cuda_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export PIPEINFER_FIXTURES_DIR=$b/fixtures
else
  say "- no build possible and no .gpu-bundle: run scripts/gpu-bundle.sh first (docs/gpu.md)"
  exit 1
fi
export PIPEINFER_BIN_DIR=$bin LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}${cuda_libs}
say ""
say "## Tests"
rc=0
# Time limits that keep the whole check under the device tool's 10 minutes per command.
declare -A limit=([cuda_ops_test]=90 [engine_cuda_test]=120 [gpu_stage_test]=120)
for t in cuda_ops_test engine_cuda_test gpu_stage_test; do
  t0=$(date +%s)
  timeout -k 5 "${limit[$t]}" "$bin/$t" > "$OUT/$t.log" 2>&1
  code=$?
  (( code != 0 )) && rc=1
  passed=$(grep -c '^\[       OK \]' "$OUT/$t.log")
  failed=$(grep -c '^\[  FAILED  \].*(' "$OUT/$t.log")
  skipped=$(grep -c '^\[  SKIPPED \].*(' "$OUT/$t.log")
  say "- $t: exit $code, $passed passed, $failed failed, $skipped skipped ($(( $(date +%s) - t0 )) s)"
  grep -E '^\[  FAILED  \].*\(|^\[  SKIPPED \].*\(' "$OUT/$t.log" | head -20 | sed 's/^/  - /' |
    tee -a "$report"
  grep -E 'max \|d|max\|d|ids equal|not present' "$OUT/$t.log" | head -40 | sed 's/^/    /' >> "$report"
done

if (( quick == 0 )); then
  say ""
  say "## engine_bench --device cuda:0 (7B-shaped layers: n_embd 4096, n_ff 11008, 32 heads, 4 layers)"
  shape=(--n-embd 4096 --n-ff 11008 --n-head 32 --n-layer 4 --seconds 2 --dir /tmp)
  for type in f16 q4_K; do
    # Weight streaming (short contexts: attention reads at most 128 keys) and prefill ...
    timeout -k 5 120 "$bin/engine_bench" --device cuda:0 --types "$type" "${shape[@]}" \
      --runs 1,4,8 --context 128 --prefill 512 2>&1 | tee -a "$report" || rc=1
    # ... and decode at contexts up to 2048 tokens (attention's share).
    timeout -k 5 90 "$bin/engine_bench" --device cuda:0 --types "$type" "${shape[@]}" \
      --runs 1 --context 2048 2>&1 | grep -E '^\| '"$type"' ' | tee -a "$report" || rc=1
  done
fi
# Where a decode step's time goes, kernel by kernel (hardware counters; works on Firecracker
# machines, not on gVisor): one Q4_K 7B-shaped layer, ncu's speed-of-light section for 48 kernel
# launches after the bench's warm-up, only when there is time left. Raw CSV in $OUT/ncu-decode.csv.
if (( quick == 0 )) && command -v ncu > /dev/null && (( $(date +%s) - start < 400 )); then
  timeout -k 5 120 ncu --clock-control none --launch-skip 400 --launch-count 48 \
    --section SpeedOfLight --csv "$bin/engine_bench" --device cuda:0 --types q4_K \
    --n-embd 4096 --n-ff 11008 --n-head 32 --n-layer 1 --runs 1 --context 128 --seconds 0.5 \
    --dir /tmp > "$OUT/ncu-decode.csv" 2> "$OUT/ncu-decode.err"
  say ""
  say "## ncu (exit $?): kernels of a Q4_K decode step, DRAM throughput % of peak"
  python3 - "$OUT/ncu-decode.csv" >> "$report" 2>&1 <<'PY'
import csv, sys
rows = {}
lines = [l for l in open(sys.argv[1]) if l.startswith('"')]
for r in csv.DictReader(lines):
    k = (r.get("ID"), r.get("Kernel Name", "")[:60])
    rows.setdefault(k, {})[r.get("Metric Name")] = r.get("Metric Value")
print("| kernel | duration | DRAM % |")
print("|---|--:|--:|")
for (i, name), m in rows.items():
    print(f"| {name} | {m.get('Duration', '')} | {m.get('DRAM Throughput', '')} |")
PY
fi
say ""
say "total $(( $(date +%s) - start )) s, status $rc"
exit "$rc"
