// Internal: the integer ("fast") MatMul path for quantized weights (QuantMath::kFast).
//
// Each token's activation row is quantized once per MatMul call, as llama.cpp's CPU backend does
// (act_quant.h: two llama.cpp generations differ in the details marked [2023] / [2024]):
//   * Q8_0 (for Q4_0, Q5_0 and Q8_0 weights): blocks of 32; d = amax / 127 rounded to f16 (kept
//     here as the float value of that f16), q = nearbyint(x * 127 / amax) in [-127, 127].
//   * Q8_1 (for Q4_1 and Q5_1 weights): Q8_0's q, d = amax / 127 and s = d * sum(q) per block,
//     [2023] both float32, [2024] both rounded to f16 (kept as floats). The weights' min m
//     contributes m * s to a block's product.
//   * Q8_K (for Q2_K, Q3_K, Q4_K, Q5_K and Q6_K weights): blocks of 256; with `max` the value of
//     largest magnitude, iscale = [2023] -128 / max, [2024] -127 / max;
//     q = min(127, nearbyint(iscale * x)); d = 1 / iscale (float32), and bsums[j] = sum of q over
//     weights 16j..16j+15. [2023] q reaches -128: the kernels must be exact for it (no sign
//     transfer onto the activation byte, which would overflow).
// A weight block times an activation block is an exact integer sum, scaled by d_w * d_x in float
// (K-quants: sub-block scales multiply the integer partial sums; mins use the bsums; Q3_K's and
// Q6_K's offset weights are applied as unsigned values with the offset times the bsums taken off).
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
  // Q8_1 only (Q4_1/Q5_1 weights; else null): s of each block, s[t * (cols / 32) ..].
  const float* s = nullptr;
  // AVX-512 Q4_0 and Q8_0 only (else null): each block's integer sum starts here, -8 (Q4_0: the
  // weights' offset) or -128 (Q8_0: the weights are moved to 0..255) times the sum of the block's
  // 32 quants, block_init[t * (cols / 32) + b].
  const int32_t* block_init = nullptr;
  // AVX-512 Q4_K only (else null): per token and block, 4 words: the sums of the token's quants
  // over sub-blocks 2k (low 16 bits) and 2k + 1 (high 16 bits), q4_k_bsum_pairs[(t * nb + b) * 4
  // + k] with nb = cols / 256.
  const int32_t* q4_k_bsum_pairs = nullptr;
  // AVX-512 Q6_K only (else null): per token, block and sub-block s, where the sub-block's integer
  // sum starts: -32 (the weights' offset) times the sum of the token's 16 quants over it,
  // q6_k_offsets[(t * nb + b) * 16 + s] with nb = cols / 256.
  const int32_t* q6_k_offsets = nullptr;
};

// Activation block size for a weight type on the integer path: 32 (Q8_0/Q8_1), 256 (Q8_K), or 0
// when the type has no integer path.
int QuantActBlock(gguf::TensorType type);
// True when the type's activations are Q8_1 (they carry the block sums QuantActs::s).
bool QuantActHasSums(gguf::TensorType type);

// Quantizers (portable; both row kernels read their output). n is a multiple of the block.
void QuantizeQ8_0(const float* x, int64_t n, int8_t* qs, float* d);
void QuantizeQ8_1(const float* x, int64_t n, int8_t* qs, float* d, float* s);
void QuantizeQ8_K(const float* x, int64_t n, int8_t* qs, float* d, int16_t* bsums);

// Rows [r0, r1) of y = w * x on the integer path, portable (w.type must have QuantActBlock != 0).
void ScalarQuantRows(const Matrix& w, const QuantActs& a, int64_t n_tokens, float* y,
                     int64_t y_stride, int64_t r0, int64_t r1);

}  // namespace pipeinfer::kernels::internal

namespace pipeinfer::kernels::avx2 {
// Same with AVX2; false when the type has no AVX2 integer kernel. Only when UsingSimd().
bool QuantMatMulRows(const Matrix& w, const internal::QuantActs& a, int64_t n_tokens, float* y,
                     int64_t y_stride, int64_t r0, int64_t r1);
// The kernels behind it for Q4_1/Q5_0/Q5_1 (qdot_legacy_avx2.cc) and Q2_K/Q3_K/Q4_K/Q5_K
// (qdot_kquant_avx2.cc); false for other types.
bool LegacyQuantMatMulRows(const Matrix& w, const internal::QuantActs& a, int64_t n_tokens,
                           float* y, int64_t y_stride, int64_t r0, int64_t r1);
bool KQuantMatMulRows(const Matrix& w, const internal::QuantActs& a, int64_t n_tokens, float* y,
                      int64_t y_stride, int64_t r0, int64_t r1);
}  // namespace pipeinfer::kernels::avx2
