#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite with CTest.
#
#   ./scripts/test.sh            release build in build/, all tests except long ones
#   ./scripts/test.sh --asan     ASan+UBSan build in build-asan/
#   ./scripts/test.sh --tsan     ThreadSanitizer build in build-tsan/, unit + integration tests;
#                                fails on any report, also one from a service a test started
#                                (reports land in build-tsan/tsan-reports/ and are printed).
#                                tests/sanitizers/tsan.supp suppresses only what TSan reports
#                                inside the uninstrumented gRPC, protobuf, Abseil, OpenSSL and
#                                cpp-httplib libraries; timeouts and latency bounds are multiplied
#                                by PIPEINFER_TSAN_TIMEOUT_FACTOR (4)
#   ./scripts/test.sh --fuzz     clang + libFuzzer build in build-fuzz/, short fuzz runs only
#                                (PIPEINFER_FUZZ_SECONDS=600 for 10-minute runs per target)
#   extra arguments after `--` go to ctest (e.g. -- -R gguf)
#
# The release build includes the CUDA backend (and NCCL) when nvcc is installed (/usr/local/cuda or
# on PATH; PIPEINFER_CUDA=OFF in the environment turns it off); its `cuda` tests skip, saying why,
# on a machine without a GPU. The sanitizer and fuzz builds are CPU-only.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=release
ctest_args=()
while (($#)); do
  case "$1" in
    --asan) mode=asan ;;
    --tsan) mode=tsan ;;
    --fuzz) mode=fuzz ;;
    --) shift; ctest_args+=("$@"); break ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

./scripts/setup.sh

jobs=$(nproc)
cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo)
label_args=(-LE "fuzz|soak|bench|container|browser")
build_args=()
case "$mode" in
  release)
    build=build
    nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
    if [[ -n $nvcc && ${PIPEINFER_CUDA:-ON} != OFF ]]; then
      cmake_args+=(-DPIPEINFER_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc")
      cuda_root=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
      [[ -f $cuda_root/include/nccl.h ]] && cmake_args+=(-DPIPEINFER_NCCL=ON)
      echo "== CUDA backend on ($nvcc)"
    else
      cmake_args+=(-DPIPEINFER_CUDA=OFF -DPIPEINFER_NCCL=OFF)
    fi
    ;;
  asan)
    build=build-asan
    cmake_args+=(-DPIPEINFER_SANITIZE=ON)
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    ;;
  tsan)
    build=build-tsan
    cmake_args+=(-DPIPEINFER_SANITIZE=thread)
    # second_deadlock_stack: both stacks of a lock-order inversion; halt_on_error: a race fails
    # the process that found it. log_path: every process's reports, the services' too (their
    # stderr goes to temporary logs). CTest adds suppressions=tests/sanitizers/tsan.supp.
    tsan_reports=$PWD/$build/tsan-reports
    export TSAN_OPTIONS=${TSAN_OPTIONS:-second_deadlock_stack=1:halt_on_error=1:log_exe_name=1:log_path=$tsan_reports/tsan}
    ;;
  fuzz)
    build=build-fuzz
    cmake_args+=(-DPIPEINFER_FUZZ=ON -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++)
    label_args=(-L fuzz)
    build_args=(--target gguf_fuzz stage_fuzz openai_fuzz chat_template_fuzz tokenizer_fuzz)
    ;;
esac

echo "== configure ($mode, $build)"
cmake -S . -B "$build" "${cmake_args[@]}"
echo "== build"
cmake --build "$build" -j "$jobs" "${build_args[@]}"
echo "== test"
[[ $mode == tsan ]] && rm -rf "$tsan_reports" && mkdir -p "$tsan_reports"
rc=0
ctest --test-dir "$build" --output-on-failure -j "$jobs" "${label_args[@]}" "${ctest_args[@]}" || rc=$?
if [[ $mode == tsan ]] && compgen -G "$tsan_reports/tsan.*" > /dev/null; then
  echo "== ThreadSanitizer reports (one file per process, $tsan_reports)"
  for f in "$tsan_reports"/tsan.*; do
    echo "---- $f"
    head -c 20000 "$f"
  done
  rc=1
fi
exit "$rc"
