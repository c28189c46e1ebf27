// Internal, AVX-512 VNNI translation units only (compiled with -mavx512f/bw/dq/vl/vnni): the
// tile framework of the integer MatMul path (qdot.h) for Q8_0 (qdot_avx512.cc) and Q6_K
// (qdot_kquant_avx512.cc) weights.
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
// Batches of up to K::kSmallBatch tokens (decode; speculative runs for the K-quants) go one row
// at a time (several rows read side by side defeat the hardware prefetchers: measured slower);
// larger batches use tiles of K::kR rows. Where K::kAux says so, each token's share of a block
// pair's work is prepared once per tile (K::Prepare) for all of its rows.
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

// The grouped kernels (qdot_groups_avx512.cc): Q4_0 and Q4_K, in groups of 8 rows
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

// [a x 8, b x 8]
inline __m512 TwoScales(float a, float b) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(a)), _mm256_set1_ps(b), 1);
}

inline float Sum512(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// Which tiles get their tokens' operands prepared once per tile (K::Prepare, read through
// Args::aux): none, small batches only (the rest compute them in the kernel), or every tile.
enum class Aux { kNone, kSmallBatches, kAlways };

inline float Sum256(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// Where a micro-kernel reads and writes.
struct Args {
  const uint8_t* row[8];  // R rows
  const int8_t* x[8];     // T tokens' quants
  const float* d[8];      // T tokens' block scales
  const int16_t* bs[8];   // T tokens' bsums (Q8_K)
  // Q4_0/Q8_0 small batches: per token and block pair, the token's part of the pair's products
  // prepared once for all rows (Prepare); null: computed in the kernel.
  const uint8_t* aux[8];
  // Kernels with row preparation (K::kRowPrepBytes), large batches: per row, its blocks' operands
  // prepared once per tile (K::PrepareRow) for all of its tokens.
  const uint8_t* prep[8];
  float* y;  // y[t * ys + r] for the tile's first row and token
  int64_t ys;
  int64_t nb;  // weight blocks per row
};

inline void SetZero(__m512& v) { v = _mm512_setzero_ps(); }
inline void SetZero(__m256& v) { v = _mm256_setzero_ps(); }
inline float SumLanes(__m512 v) { return Sum512(v); }
inline float SumLanes(__m256 v) { return Sum256(v); }

// A tile's R x T accumulators (16 or 8 lanes): cleared before, and each summed into
// y[t * ys + r] after.
template <class V, int R, int T>
inline void ZeroTile(V (&acc)[R][T]) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) SetZero(acc[r][t]);
  }
}

template <class V, int R, int T>
inline void StoreTile(const Args& g, const V (&acc)[R][T]) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) g.y[t * g.ys + r] = SumLanes(acc[r][t]);
  }
}

// ----- tiles -----------------------------------------------------------------------------------

// K::Run<R, T>, or K::RunPrepared<R, T> on prepared rows (Args::prep).
template <class K, int R, int T, bool kPrepared>
inline void RunOne(const Args& g) {
  if constexpr (kPrepared) {
    K::template RunPrepared<R, T>(g);
  } else {
    K::template Run<R, T>(g);
  }
}

template <class K, int R, bool kPrepared = false>
void RunRows(const Args& g, int nt) {
  switch (nt) {
    case 1:
      return RunOne<K, R, 1, kPrepared>(g);
    case 2:
      return RunOne<K, R, 2, kPrepared>(g);
    case 3:
      return RunOne<K, R, 3, kPrepared>(g);
    default:
      return RunOne<K, R, 4, kPrepared>(g);
  }
}

template <class K>
concept PreparesRows = requires {
  K::kRowPrepBytes;
};

template <class K, bool kPrepared = false>
void RunTile(const Args& g, int nr, int nt) {
  static_assert(K::kT == 4 && K::kR >= 2 && K::kR <= 4);
  if constexpr (kPrepared) {
    static_assert(K::kR == 2);
    if (nr == 2) return RunRows<K, 2, true>(g, nt);
    return RunRows<K, 1, true>(g, nt);
  } else {
    if constexpr (K::kR >= 4) {
      if (nr == 4) return RunRows<K, 4>(g, nt);
    }
    if constexpr (K::kR >= 3) {
      if (nr == 3) return RunRows<K, 3>(g, nt);
    }
    if (nr == 2) return RunRows<K, 2>(g, nt);
    RunRows<K, 1>(g, nt);
  }
}

// Per-thread scratch for Prepare (64-byte aligned; freed when the thread ends).
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
thread_local Scratch row_scratch;  // K::PrepareRow

template <class K>
void Tile(const Matrix& w, const QuantActs& a, int ab, float* y, int64_t ys, int64_t r0, int64_t r1,
          int64_t t0, int64_t t1) {
  const int64_t nb = w.cols / ab;
  Args g;
  g.ys = ys;
  g.nb = nb;
  for (const uint8_t*& p : g.aux) p = nullptr;
  const bool small = t1 - t0 <= K::kSmallBatch;
  const int64_t kr = small ? 1 : K::kR;
  // Small batches go row by row: the tokens' share of the work is done once for all rows.
  uint8_t* aux = nullptr;
  int64_t aux_token_bytes = 0;
  if constexpr (K::kAux != Aux::kNone) {
    const bool want = K::kAux == Aux::kAlways || (small && r1 - r0 > 1);
    if (want && nb >= 2) {
      aux_token_bytes = nb / 2 * K::kAuxBytes;
      aux = scratch.Get(static_cast<size_t>((t1 - t0) * aux_token_bytes));
      for (int64_t t = t0; t < t1; ++t) {
        K::Prepare(a.qs + t * a.cols, a.d + t * nb, nb / 2, aux + (t - t0) * aux_token_bytes);
      }
    }
  }
  // Rows prepared once for all of the tile's tokens (large batches of kernels that can).
  bool prepared = false;
  uint8_t* prep = nullptr;
  if constexpr (PreparesRows<K>) {
    prepared = !small;
    if (prepared) prep = row_scratch.Get(static_cast<size_t>(kr * nb * K::kRowPrepBytes));
  }
  for (const uint8_t*& p : g.prep) p = nullptr;
  for (int64_t r = r0; r < r1; r += kr) {
    const int nr = static_cast<int>(r1 - r < kr ? r1 - r : kr);
    for (int i = 0; i < nr; ++i) g.row[i] = w.data + (r + i) * w.row_bytes;
    if constexpr (PreparesRows<K>) {
      for (int i = 0; prepared && i < nr; ++i) {
        uint8_t* out = prep + i * nb * K::kRowPrepBytes;
        K::PrepareRow(g.row[i], nb, out);
        g.prep[i] = out;
      }
    }
    for (int64_t t = t0; t < t1; t += K::kT) {
      const int nt = static_cast<int>(t1 - t < K::kT ? t1 - t : K::kT);
      for (int i = 0; i < nt; ++i) {
        g.x[i] = a.qs + (t + i) * a.cols;
        g.d[i] = a.d + (t + i) * nb;
        g.bs[i] = a.bsums == nullptr ? nullptr : a.bsums + (t + i) * nb * 16;
        if (aux != nullptr) g.aux[i] = aux + (t + i - t0) * aux_token_bytes;
      }
      g.y = y + t * ys + r;
      if constexpr (PreparesRows<K>) {
        if (prepared) {
          RunTile<K, true>(g, nr, nt);
          continue;
        }
      }
      RunTile<K>(g, nr, nt);
    }
  }
}

}  // namespace
}  // namespace pipeinfer::kernels::avx512
