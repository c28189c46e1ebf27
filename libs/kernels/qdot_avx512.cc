// The dispatch of the AVX-512 VNNI integer MatMul tiles (compiled with -mavx512f/bw/dq/vl/vnni;
// only called when the CPU has them):
// Q4_0, Q8_0, Q4_K and Q6_K, all in groups of 8 rows (qdot_groups_avx512.cc,
// qdot_groups_kquant_avx512.cc).
#include "kernels/qdot_avx512_tile.h"

namespace pipeinfer::kernels::avx512 {

bool HasQuantKernel(TensorType type) {
  switch (type) {
    case TensorType::kQ4_0:
    case TensorType::kQ8_0:
    case TensorType::kQ4_K:
    case TensorType::kQ6_K:
      return true;
    default:
      return false;
  }
}

void QuantMatMulTile(const Matrix& w, const QuantActs& a, float* y, int64_t ys, int64_t r0,
                     int64_t r1, int64_t t0, int64_t t1) {
  switch (w.type) {
    case TensorType::kQ4_0:
    case TensorType::kQ8_0:
    case TensorType::kQ4_K:
    case TensorType::kQ6_K:
      GroupedMatMulTile(w, a, y, ys, r0, r1, t0, t1);
      return;
    default:
      std::abort();
  }
}

}  // namespace pipeinfer::kernels::avx512
