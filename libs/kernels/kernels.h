// CPU kernels of the engine: weight dequantization, (small-batch) matrix products, and the vector
// operations of the llama forward pass.
//
// Weights are used in their file layout (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K, ...); a matrix
// product dequantizes each weight block once and applies it to every token of the batch, so a
// speculative run of k tokens reads the weights once. With QuantMath::kExact activations stay F32
// (the numerics match llama.cpp run on exactly dequantized weights); with QuantMath::kFast (the
// default) Q4_0/Q8_0/Q4_K/Q6_K products use llama.cpp's scheme: activations quantized to 8 bits
// once per call, integer dot products (see SetQuantMath).
//
// Every kernel has a portable scalar implementation and, where the CPU has AVX2+FMA+F16C, a
// vectorized one chosen at run time. SetForceScalar(true) selects the portable path (tests compare
// the two).
#pragma once

#include <cstddef>
#include <cstdint>

#include "gguf/tensor_type.h"
#include "kernels/thread_pool.h"

namespace pipeinfer::kernels {

// --- CPU features -----------------------------------------------------------------------------
bool CpuHasAvx2Fma();  // AVX2 + FMA + F16C, detected once
// Forces the portable paths (process-wide; for tests and benchmarks).
void SetForceScalar(bool force);
bool UsingSimd();  // CpuHasAvx2Fma() && !forced scalar

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
  size_t row_bytes = 0;
};

// True when the kernels can compute with this type.
bool SupportsType(gguf::TensorType type);

// Row `row` of `w` as floats (cols values).
void DequantizeRow(const Matrix& w, int64_t row, float* out);

// y[t * y_stride + r] = sum_c w[r][c] * x[t * x_stride + c], for t < n_tokens, r < w.rows.
// Rows are split over the pool; each weight block is decoded once for all n_tokens.
void MatMul(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y,
            int64_t y_stride, ThreadPool& pool);

// --- Vector ops (single thread; n is any length) ----------------------------------------------
float DotF32(const float* a, const float* b, int64_t n);
// Dot of F32 `a` with F16 `b` (KV cache rows).
float DotF32F16(const float* a, const uint16_t* b, int64_t n);
// y += s * x   (F32 x, or F16 x)
void AxpyF32(float s, const float* x, float* y, int64_t n);
void AxpyF16(float s, const uint16_t* x, float* y, int64_t n);
// out = x / sqrt(mean(x^2) + eps) * w
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out);
// out[i] = silu(gate[i]) * up[i]
void SwiGlu(const float* gate, const float* up, float* out, int64_t n);
// In-place softmax over n values; returns the log of the normalizer (max + log(sum exp)).
float SoftmaxInPlace(float* x, int64_t n);

}  // namespace pipeinfer::kernels
