set -euo pipefail
SRC=/work/main/build-llamacpp/src; B=/work/main/build-llamacpp/build-cpu
flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { [[ " $flags " == *" $1 "* ]]; }
opts=(-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
for f in "sse4_2 GGML_SSE42" "f16c GGML_F16C" "fma GGML_FMA" "bmi2 GGML_BMI2" "avx GGML_AVX" "avx2 GGML_AVX2" "avx_vnni GGML_AVX_VNNI" "avx512f GGML_AVX512" "avx512vbmi GGML_AVX512_VBMI" "avx512_vnni GGML_AVX512_VNNI" "avx512_bf16 GGML_AVX512_BF16"; do
  set -- $f; if has $1; then opts+=(-D$2=ON); else opts+=(-D$2=OFF); fi
done
echo "${opts[@]}"
cmake -S $SRC -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_BACKEND_DL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DGGML_OPENMP=ON "${opts[@]}" > $B.configure.log 2>&1 || { tail -30 $B.configure.log; exit 1; }
nice -n 10 ninja -C $B -j 2 llama-bench llama-quantize
