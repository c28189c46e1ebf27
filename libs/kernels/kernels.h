// CPU kernels of the engine: weight dequantization, matrix products (decode, speculative batches
// and prefill), and the vector operations of the llama forward pass.
//
// Weights are used in their file layout (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K, ...); a matrix
// product dequantizes each weight block once and applies it to several tokens, so a speculative
// run of k tokens reads the weights once, and a prefill of many tokens works through the matrix
// in tiles of rows x tokens that stay in the caches. With QuantMath::kExact activations stay F32
// (the numerics match llama.cpp run on exactly dequantized weights); with QuantMath::kFast (the
// default) quantized products use llama.cpp's scheme: activations quantized to 8 bits once per
// call, integer dot products (see SetQuantMath).
//
// Kernel paths, chosen at run time for the CPU at hand (SimdLevel):
//   * scalar: portable C++, every type; the reference the other paths are tested against.
//   * avx2:   AVX2 + FMA + F16C, every type (files *_avx2.cc, compiled with those flags only).
//   * avx512: AVX-512 F/BW/DQ/VL (files *_avx512.cc). Float MatMul of F32/F16/BF16 and, with
//             AVX-512 VNNI, the integer paths of Q8_0/Q4_0/Q4_K/Q6_K, as register-blocked tiles of
//             rows x tokens (groups of 8 rows, interleave.h); every other kernel of
//             this level is the avx2 one.
// The rest of the library is compiled for plain x86-64 (or any other CPU, where only the scalar
// path exists). The level in use is the best one the CPU has, capped by SetMaxSimdLevel or, at
// start-up, by the environment variable PIPEINFER_KERNELS_PATH (scalar, avx2 or avx512).
//
// Numerics: within one path a token's result is bit-identical whatever the batch size, the token's
// place in the batch or the thread split (each path sums a token's row in one fixed order). Paths
// differ from each other by rounding only (different summation orders; the integer dot products
// themselves are exact on every path).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "gguf/tensor_type.h"
#include "kernels/thread_pool.h"

namespace pipeinfer::kernels {

// --- CPU features and kernel paths -----------------------------------------------------------
struct CpuFeatures {
  bool avx2_fma_f16c = false;  // AVX2 + FMA + F16C (with OS support for the AVX state)
  bool avx512 = false;         // AVX-512 F + BW + DQ + VL (with OS support for the ZMM state)
  bool avx512_vnni = false;
  bool avx512_bf16 = false;
  bool amx = false;  // AMX tile + INT8 + BF16 (reported only; no AMX kernels)
};
const CpuFeatures& GetCpuFeatures();  // detected once
std::string CpuFeatureString();  // e.g. "avx2 fma f16c avx512(f bw dq vl) avx512_vnni avx512_bf16"

enum class SimdLevel { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
SimdLevel BestSimdLevel();  // the best level this CPU (and build) supports
// Caps the level in use (process-wide; for tests and benchmarks): ActiveSimdLevel() is
// min(cap, BestSimdLevel()). The initial cap is avx512 or PIPEINFER_KERNELS_PATH (an unknown value
// is reported on stderr and ignored).
void SetMaxSimdLevel(SimdLevel cap);
SimdLevel ActiveSimdLevel();
// Name of the active path: "scalar", "avx2", "avx512" or "avx512-vnni".
const char* ActivePath();
const char* SimdLevelName(SimdLevel level);  // "scalar", "avx2", "avx512"
std::optional<SimdLevel> ParseSimdLevel(std::string_view name);

bool CpuHasAvx2Fma();  // GetCpuFeatures().avx2_fma_f16c
// SetForceScalar(true) = SetMaxSimdLevel(kScalar); false = SetMaxSimdLevel(kAvx512).
void SetForceScalar(bool force);
bool UsingSimd();  // ActiveSimdLevel() >= kAvx2

// --- Numerics of quantized weights ------------------------------------------------------------
// kExact: F32 math on exactly dequantized weights (matches llama.cpp run on `-deq` copies).
// kFast: like llama.cpp's CPU backend, MatMul quantizes each activation row once per call (Q8_0
// blocks of 32 for Q4_0/Q8_0 weights, Q8_K blocks of 256 for Q4_K/Q6_K) and computes integer dot
// products, scaled in float per block. Other weight types (F32/F16/BF16 included) are unaffected.
// Process-wide; the default is kFast, or what the environment variable PIPEINFER_QUANT_MATH
// (`exact` or `fast`) says when the process starts.
enum class QuantMath { kExact, kFast };
void SetQuantMath(QuantMath math);
QuantMath GetQuantMath();

// --- Conversions ------------------------------------------------------------------------------
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);  // round to nearest even, like ggml/numpy
float BF16ToFloat(uint16_t h);
void HalfToFloatN(const uint16_t* in, float* out, int64_t n);
void FloatToHalfN(const float* in, uint16_t* out, int64_t n);

// --- Weights ----------------------------------------------------------------------------------
// A 2-D weight in GGUF layout: `rows` rows (output features) of `cols` elements (input features)
// each; GGUF shape [cols, rows].
struct Matrix {
  gguf::TensorType type = gguf::TensorType::kF32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;  // bytes of one row in the file layout
  // 1: the file layout, rows row_bytes apart. 8 (Q4_0, Q8_0, Q4_K, Q6_K): groups of 8 rows
  // interleaved block by block (kernels/interleave.h), 8 * row_bytes apart; row offsets must be
  // multiples of 8.
  int32_t interleave = 1;
};

// True when the kernels can compute with this type.
bool SupportsType(gguf::TensorType type);

// Row `row` of `w` as floats (cols values); either layout.
void DequantizeRow(const Matrix& w, int64_t row, float* out);

// y[t * y_stride + r] = sum_c w[r][c] * x[t * x_stride + c], for t < n_tokens, r < w.rows.
// Rows are split over the pool; each weight block is decoded once for all n_tokens.
void MatMul(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y,
            int64_t y_stride, ThreadPool& pool);

// --- Vector ops (single thread; n is any length) ----------------------------------------------
float DotF32(const float* a, const float* b, int64_t n);
// Dot of F32 `a` with F16 `b` (KV cache rows). On every path it equals DotF32(a, b converted to
// floats) bit for bit, and AxpyF16 equals AxpyF32 on the converted x (the same operations in the
// same order; the conversion is exact): callers may convert a row once and reuse it.
float DotF32F16(const float* a, const uint16_t* b, int64_t n);
// y += s * x   (F32 x, or F16 x)
void AxpyF32(float s, const float* x, float* y, int64_t n);
// Several vectors against one row, with one dispatch (attention: the query heads sharing a KV
// head): out[r] = DotF32(a + r * a_stride, b, n) and AxpyF32(s[r], x, y + r * y_stride, n) for
// r < rows, bit for bit.
void DotF32Rows(const float* a, int64_t a_stride, int64_t rows, const float* b, int64_t n,
                float* out);
void AxpyF32Rows(const float* s, const float* x, float* y, int64_t y_stride, int64_t rows,
                 int64_t n);
void AxpyF16(float s, const uint16_t* x, float* y, int64_t n);
// Attention over gathered cache rows, one dispatch for all the keys of a head group. Row j is at
// base + offsets[j]: n F16 values when f16, else n floats; `row` is n floats of scratch.
// AttentionScores: out[r * out_stride + j] = scale * DotF32(a + r * a_stride, row j, n) for r <
// rows. AttentionValues: for j = 0, 1, ... in order, AxpyF32(w[r * w_stride + j], row j,
// y + r * y_stride, n) for r < rows. Both bit for bit (the conversion is exact).
void AttentionScores(const float* a, int64_t a_stride, int64_t rows, const uint8_t* base,
                     const size_t* offsets, int64_t n_keys, bool f16, int64_t n, float scale,
                     float* row, float* out, int64_t out_stride);
void AttentionValues(const float* w, int64_t w_stride, int64_t rows, const uint8_t* base,
                     const size_t* offsets, int64_t n_keys, bool f16, int64_t n, float* row,
                     float* y, int64_t y_stride);
// out = x / sqrt(mean(x^2) + eps) * w
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out);
// out[i] = silu(gate[i]) * up[i]
void SwiGlu(const float* gate, const float* up, float* out, int64_t n);
// In-place softmax over n values; returns the log of the normalizer (max + log(sum exp)).
float SoftmaxInPlace(float* x, int64_t n);

}  // namespace pipeinfer::kernels
