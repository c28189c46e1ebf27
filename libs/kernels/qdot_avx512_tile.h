// Internal, AVX-512 VNNI translation units only (compiled with -mavx512f/bw/dq/vl/vnni): the entry
// point of the grouped integer MatMul kernels (qdot.h) and the per-thread scratch they use
// (qdot_groups_avx512.h has their framework).
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

#include "kernels/qdot.h"
#include "kernels/simd.h"

namespace pipeinfer::kernels::avx512 {

// The grouped kernels (qdot_groups_avx512.cc, qdot_groups_kquant_avx512.cc): Q4_0, Q8_0, Q4_K and
// Q6_K, in groups of 8 rows (interleave.h) whatever the matrix's layout.
void GroupedMatMulTile(const Matrix& w, const internal::QuantActs& a, float* y, int64_t ys,
                       int64_t r0, int64_t r1, int64_t t0, int64_t t1);

namespace {

using gguf::TensorType;
using internal::QuantActs;

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

}  // namespace
}  // namespace pipeinfer::kernels::avx512
