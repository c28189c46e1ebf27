// Internal: entry points of the AVX2+FMA+F16C kernels (compiled with those flags, in *_avx2.cc)
// and of the AVX-512 kernels (*_avx512.cc), and the dispatch switch. Only call an avx2:: function
// when UsingSimd() is true, an avx512:: one when ActiveSimdLevel() is kAvx512 (and, for the
// integer tiles, GetCpuFeatures().avx512_vnni).
#pragma once

#include <cstdint>

#include "kernels/kernels.h"

// 1 when the AVX2 files are built (x86); defining it to 0 gives a portable-only library.
#ifndef PIPEINFER_KERNELS_X86
#if defined(__x86_64__) || defined(__i386__)
#define PIPEINFER_KERNELS_X86 1
#else
#define PIPEINFER_KERNELS_X86 0
#endif
#endif

namespace pipeinfer::kernels::internal {
struct QuantActs;  // qdot.h
}  // namespace pipeinfer::kernels::internal

namespace pipeinfer::kernels::avx2 {

// The AVX2 matrix kernels read the activations repacked (once per MatMul call): tokens in groups
// of kPackTokens (the last group may be smaller); within a group of g tokens, for each run of 8
// columns, the g tokens' 8 values follow each other (so a group's loads are sequential and use
// constant offsets). Columns are zero-padded to a multiple of kPackCols. `packed` must be
// 32-byte aligned and hold PackedActivationsSize floats.
inline constexpr int kPackTokens = 8;
inline constexpr int kPackCols = 32;
int64_t PackedActivationsSize(int64_t cols, int64_t n_tokens);
void PackActivations(const float* x, int64_t x_stride, int64_t n_tokens, int64_t cols,
                     float* packed);

// Rows [row_begin, row_end) of y = w * x (see MatMul) from packed activations; false when the
// type has no AVX2 kernel.
bool MatMulRows(const Matrix& w, const float* packed, int64_t n_tokens, float* y, int64_t y_stride,
                int64_t row_begin, int64_t row_end);

void HalfToFloatN(const uint16_t* in, float* out, int64_t n);
void FloatToHalfN(const float* in, uint16_t* out, int64_t n);
float DotF32(const float* a, const float* b, int64_t n);
float DotF32F16(const float* a, const uint16_t* b, int64_t n);
void AxpyF32(float s, const float* x, float* y, int64_t n);
void DotF32Rows(const float* a, int64_t a_stride, int64_t rows, const float* b, int64_t n,
                float* out);
void AxpyF32Rows(const float* s, const float* x, float* y, int64_t y_stride, int64_t rows,
                 int64_t n);
void AxpyF16(float s, const uint16_t* x, float* y, int64_t n);
void AttentionScores(const float* a, int64_t a_stride, int64_t rows, const uint8_t* base,
                     const size_t* offsets, int64_t n_keys, bool f16, int64_t n, float scale,
                     float* row, float* out, int64_t out_stride);
void AttentionValues(const float* w, int64_t w_stride, int64_t rows, const uint8_t* base,
                     const size_t* offsets, int64_t n_keys, bool f16, int64_t n, float* row,
                     float* y, int64_t y_stride);
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out);
void SwiGlu(const float* gate, const float* up, float* out, int64_t n);
float SoftmaxInPlace(float* x, int64_t n);

// Activation quantizers (act_quant_avx2.cc), bit-identical to the portable ones of qdot.cc with
// the same contracts: the 32 quants of a Q8_0/Q8_1 block (returns amax); a Q8_K block's 256
// quants and its iscale = top / (first value of the largest |x|), or false (nothing written) when
// every value is 0 or NaN.
float Quantize32(const float* x, int8_t* qs);
bool QuantizeQ8_KBlock(const float* x, float top, int8_t* qs, float* iscale);

}  // namespace pipeinfer::kernels::avx2

namespace pipeinfer::kernels::avx512 {

// Tiles of y = w * x: rows [r0, r1) x tokens [t0, t1), with y[t * y_stride + r] (as MatMul).
// Float path (matmul_avx512.cc): F32, F16 and BF16 weights, activations read in place.
bool HasFloatKernel(gguf::TensorType type);
void MatMulTile(const Matrix& w, const float* x, int64_t x_stride, float* y, int64_t y_stride,
                int64_t r0, int64_t r1, int64_t t0, int64_t t1);
// Integer path (qdot_avx512.cc, needs AVX-512 VNNI): Q8_0, Q4_0, Q4_K and Q6_K weights with the
// activations of internal::QuantActs (qs, d, bsums; qs_pairs unused).
bool HasQuantKernel(gguf::TensorType type);
void QuantMatMulTile(const Matrix& w, const internal::QuantActs& a, float* y, int64_t y_stride,
                     int64_t r0, int64_t r1, int64_t t0, int64_t t1);

}  // namespace pipeinfer::kernels::avx512
