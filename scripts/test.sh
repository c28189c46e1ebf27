#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite with CTest.
#
#   ./scripts/test.sh            release build in build/, all tests except long ones
#   ./scripts/test.sh --asan     ASan+UBSan build in build-asan/
#   ./scripts/test.sh --tsan     ThreadSanitizer build in build-tsan/, unit + integration tests
#   ./scripts/test.sh --fuzz     clang + libFuzzer build in build-fuzz/, short fuzz runs only
#                                (PIPEINFER_FUZZ_SECONDS=600 for 10-minute runs per target)
#   extra arguments after `--` go to ctest (e.g. -- -R gguf)
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
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
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
  release) build=build ;;
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
    # the test that found it.
    export TSAN_OPTIONS=${TSAN_OPTIONS:-second_deadlock_stack=1:halt_on_error=1}
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
ctest --test-dir "$build" --output-on-failure -j "$jobs" "${label_args[@]}" "${ctest_args[@]}"
