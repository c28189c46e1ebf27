// Internal, AVX-512 VNNI translation units only (compiled with -mavx512f/bw/dq/vl/vnni): the
// tile framework of the integer MatMul path (qdot.h) for Q6_K weights (qdot_kquant_avx512.cc),
// the declarations of the tile entry points and the per-thread scratch the grouped kernels use
// (qdot_groups_avx512.h).
//
// A micro-kernel K::Run<R, T> computes R rows x T tokens at once: each weight block is loaded and
// unpacked once for the T tokens, each activation block once for the R rows, and the R x T
// partial sums stay in registers for the whole row. Products of 8-bit values use vpdpbusd
// (unsigned x signed bytes, four products into each 32-bit lane) or, where K-quant sub-block
// scales apply, vpmaddubsw (then vpdpwssd, or vpmaddwd and an addition, with the scales).
// Integer sums are exact; each block's sum is scaled in float (d_w * d_x). Every (row, token)
// pair goes through the same operations in the same order whatever R, T, the batch or the thread
// split, so results do not depend on them.
//
// Batches of up to K::kSmallBatch tokens (decode and speculative runs) go one row at a time
// (several rows read side by side defeat the hardware prefetchers: measured slower); larger
// batches use tiles of K::kR rows.
//
// Everything here has internal linkage: nothing may be shared with code compiled for other CPUs.
//
// GCC 12's AVX-512 headers read a self-initialized "undefined" vector in their cast helpers
// (GCC bug 105593, fixed in 13), which -Wall reports at every use.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <new>

#include "kernels/decode_avx2.h"
#include "kernels/qdot.h"
#include "kernels/simd.h"

namespace pipeinfer::kernels::avx512 {

// The grouped kernels (qdot_groups_avx512.cc): Q4_0, Q8_0 and Q4_K, in groups of 8 rows
// (interleave.h) whatever the matrix's layout.
void GroupedMatMulTile(const Matrix& w, const internal::QuantActs& a, float* y, int64_t ys,
                       int64_t r0, int64_t r1, int64_t t0, int64_t t1);
// The K-quant tiles (qdot_kquant_avx512.cc): Q6_K; false for another type.
bool KQuantMatMulTile(const Matrix& w, const internal::QuantActs& a, float* y, int64_t ys,
                      int64_t r0, int64_t r1, int64_t t0, int64_t t1);

namespace {

using gguf::TensorType;
using internal::QuantActs;

inline float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return _cvtsh_ss(h);
}

inline float Sum512(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// Where a micro-kernel reads and writes.
struct Args {
  const uint8_t* row[8];  // R rows
  const int8_t* x[8];     // T tokens' quants
  const float* d[8];      // T tokens' block scales
  const int16_t* bs[8];   // T tokens' bsums (Q8_K)
  float* y;               // y[t * ys + r] for the tile's first row and token
  int64_t ys;
  int64_t nb;  // weight blocks per row
};

// A tile's R x T accumulators (16 lanes): cleared before, and each summed into y[t * ys + r]
// after.
template <int R, int T>
inline void ZeroTile(__m512 (&acc)[R][T]) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  }
}

template <int R, int T>
inline void StoreTile(const Args& g, const __m512 (&acc)[R][T]) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) g.y[t * g.ys + r] = Sum512(acc[r][t]);
  }
}

// ----- tiles -----------------------------------------------------------------------------------

template <class K, int R>
void RunRows(const Args& g, int nt) {
  switch (nt) {
    case 1:
      return K::template Run<R, 1>(g);
    case 2:
      return K::template Run<R, 2>(g);
    case 3:
      return K::template Run<R, 3>(g);
    default:
      return K::template Run<R, 4>(g);
  }
}

template <class K>
void RunTile(const Args& g, int nr, int nt) {
  static_assert(K::kT == 4 && K::kR >= 2 && K::kR <= 4);
  if constexpr (K::kR >= 4) {
    if (nr == 4) return RunRows<K, 4>(g, nt);
  }
  if constexpr (K::kR >= 3) {
    if (nr == 3) return RunRows<K, 3>(g, nt);
  }
  if (nr == 2) return RunRows<K, 2>(g, nt);
  RunRows<K, 1>(g, nt);
}

// Per-thread scratch (64-byte aligned; freed when the thread ends).
struct Scratch {
  uint8_t* p = nullptr;
  size_t n = 0;
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { Free(); }
  void Free() {
    if (p != nullptr) ::operator delete[](p, std::align_val_t(64));
    p = nullptr;
    n = 0;
  }
  uint8_t* Get(size_t need) {
    if (need > n) {
      Free();
      p = static_cast<uint8_t*>(::operator new[](need, std::align_val_t(64)));
      n = need;
    }
    return p;
  }
};
thread_local Scratch scratch;

template <class K>
void Tile(const Matrix& w, const QuantActs& a, int ab, float* y, int64_t ys, int64_t r0, int64_t r1,
          int64_t t0, int64_t t1) {
  const int64_t nb = w.cols / ab;
  Args g;
  g.ys = ys;
  g.nb = nb;
  const int64_t kr = t1 - t0 <= K::kSmallBatch ? 1 : K::kR;
  for (int64_t r = r0; r < r1; r += kr) {
    const int nr = static_cast<int>(r1 - r < kr ? r1 - r : kr);
    for (int i = 0; i < nr; ++i) g.row[i] = w.data + (r + i) * w.row_bytes;
    for (int64_t t = t0; t < t1; t += K::kT) {
      const int nt = static_cast<int>(t1 - t < K::kT ? t1 - t : K::kT);
      for (int i = 0; i < nt; ++i) {
        g.x[i] = a.qs + (t + i) * a.cols;
        g.d[i] = a.d + (t + i) * nb;
        g.bs[i] = a.bsums == nullptr ? nullptr : a.bsums + (t + i) * nb * 16;
      }
      g.y = y + t * ys + r;
      RunTile<K>(g, nr, nt);
    }
  }
}

}  // namespace
}  // namespace pipeinfer::kernels::avx512
