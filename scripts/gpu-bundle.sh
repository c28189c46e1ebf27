#!/usr/bin/env bash
# Prepares the one GPU run of scripts/gpu-check.sh. The lent GPU machines (docs/gpu.md) have the
# CUDA toolkit but none of this project's Debian libraries (gRPC, Abseil, ...) and cannot install
# any, so the CUDA build is made here and packed into .gpu-bundle/bundle.tar.xz (git-ignored,
# compressed: a device run carries at most 64 MiB), which unpacks to:
#   bin/       the CUDA-enabled services, tools, cuda tests and engine_bench (stripped)
#   lib/       the shared libraries they load from Debian (not glibc, not the CUDA libraries:
#              the GPU machine has its own cuBLAS, NCCL and driver)
#   fixtures/  the fixture models and llama.cpp references the cuda tests read
#   BUILD      the commit, compiler and CMake options of the build
#
#   ./scripts/gpu-bundle.sh            build/ as scripts/test.sh configures it on a machine with
#                                      nvcc (CUDA + NCCL, sm_90), then pack
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
build=build
out=.gpu-bundle
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPIPEINFER_CUDA=ON \
  -DPIPEINFER_NCCL=ON -DCMAKE_CUDA_ARCHITECTURES=90
targets=(pipeinfer pipeinfer-stage pipeinfer-draft pipeinfer-router engine_bench cuda_ops_test
  engine_cuda_test gpu_stage_test)
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/fixtures/models" "$out/fixtures/refs"
for t in "${targets[@]}"; do
  cp "$build/bin/$t" "$out/bin/"
  strip --strip-all "$out/bin/$t"
done
# Debian libraries the binaries load, minus the C runtime (present everywhere, and it must match
# the machine's loader) and the CUDA libraries (found on the GPU machine by gpu-check.sh).
skip='/(ld-linux|libc|libm|libpthread|libdl|librt|libresolv|libgcc_s|libstdc\+\+|libcuda|libcudart|libcublas|libcublasLt|libnccl|libnvidia)[.-]'
for t in "${targets[@]}"; do ldd "$out/bin/$t"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3}' |
  sort -u | grep -Ev "$skip" | while read -r lib; do cp -L "$lib" "$out/lib/"; done
# The tiny llama fixtures (every weight type) and their references; the two byte-level BPE
# models (25 MB each) do not fit the 64 MiB a device run may carry: their GPU checks skip there.
cp tests/fixtures/models/tiny-*.gguf "$out/fixtures/models/"
cp tests/fixtures/refs/tiny-* "$out/fixtures/refs/"
cp -r tests/fixtures/prompts "$out/fixtures/" 2>/dev/null || true
{
  echo "commit $(git rev-parse HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "built $(date -u +%FT%TZ) on $(uname -n), $(nvcc --version 2>/dev/null | tail -1)"
  echo "cmake -DPIPEINFER_CUDA=ON -DPIPEINFER_NCCL=ON -DCMAKE_CUDA_ARCHITECTURES=90"
} > "$out/BUILD"
# One compressed file: what travels to the GPU machine.
tar -C "$out" -cJf "$out.tar.xz" bin lib fixtures BUILD
rm -rf "$out"
mkdir -p "$out"
mv "$out.tar.xz" "$out/bundle.tar.xz"
du -sh "$out/bundle.tar.xz"
