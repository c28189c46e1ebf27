// Internal: the integer ("fast") MatMul path for quantized weights (QuantMath::kFast).
//
// Each token's activation row is quantized once per MatMul call, as llama.cpp does:
//   * Q8_0 (for Q4_0 and Q8_0 weights): blocks of 32; d = amax / 127 rounded to f16 (kept here as
//     the float value of that f16), q = nearbyint(x * 127 / amax) in [-127, 127].
//   * Q8_K (for Q4_K and Q6_K weights): blocks of 256; with `max` the value of largest magnitude,
//     iscale = -128 / max, q = min(127, nearbyint(iscale * x)), d = 1 / iscale (float32), and
//     bsums[j] = sum of q over weights 16j..16j+15.
// A weight block times an activation block is an exact integer sum, scaled by d_w * d_x in float
// (K-quants: sub-block scales multiply the integer partial sums; mins use the bsums).
#pragma once

#include <cstdint>

#include "kernels/kernels.h"

namespace pipeinfer::kernels::internal {

// Activations quantized for one MatMul call: token t's quants are qs[t * cols ..], its block
// scales d[t * (cols / block) ..] and (Q8_K) its 16 sums per block bsums[t * (cols / 256 * 16) ..].
struct QuantActs {
  const int8_t* qs = nullptr;
  const float* d = nullptr;
  const int16_t* bsums = nullptr;
  int64_t cols = 0;
  // AVX2 Q4_0 only (else null): the Q8_0 blocks of each token regrouped by pairs to match the
  // nibble order of two Q4_0 blocks loaded side by side. Pair p (blocks 2p, 2p+1) is 64 bytes,
  // qs_pairs[t * cols + 64p ..]: block 2p's values 0-15, block 2p+1's 0-15, block 2p's 16-31,
  // block 2p+1's 16-31; and 8 floats d_pairs[t * (cols / 64 * 8) + 8p ..]: d of block 2p four
  // times, then d of block 2p+1 four times. An odd last block is read from qs and d.
  const int8_t* qs_pairs = nullptr;
  const float* d_pairs = nullptr;
};

// Activation block size for a weight type on the integer path: 32 (Q8_0), 256 (Q8_K), or 0 when
// the type has no integer path.
int QuantActBlock(gguf::TensorType type);

// Quantizers (portable; both row kernels read their output). n is a multiple of the block.
void QuantizeQ8_0(const float* x, int64_t n, int8_t* qs, float* d);
void QuantizeQ8_K(const float* x, int64_t n, int8_t* qs, float* d, int16_t* bsums);

// Rows [r0, r1) of y = w * x on the integer path, portable (w.type must have QuantActBlock != 0).
void ScalarQuantRows(const Matrix& w, const QuantActs& a, int64_t n_tokens, float* y,
                     int64_t y_stride, int64_t r0, int64_t r1);

}  // namespace pipeinfer::kernels::internal

namespace pipeinfer::kernels::avx2 {
// Same with AVX2; false when the type has no AVX2 integer kernel. Only when UsingSimd().
bool QuantMatMulRows(const Matrix& w, const internal::QuantActs& a, int64_t n_tokens, float* y,
                     int64_t y_stride, int64_t r0, int64_t r1);
}  // namespace pipeinfer::kernels::avx2
