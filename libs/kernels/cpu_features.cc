#include <atomic>

#include "kernels/kernels.h"
#include "kernels/simd.h"

namespace pipeinfer::kernels {
namespace {

std::atomic<bool> force_scalar{false};

bool DetectAvx2Fma() {
#if PIPEINFER_KERNELS_X86
  // __builtin_cpu_supports also checks that the OS saves the AVX state.
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

}  // namespace

bool CpuHasAvx2Fma() {
  static const bool has = DetectAvx2Fma();
  return has;
}

void SetForceScalar(bool force) { force_scalar.store(force, std::memory_order_relaxed); }

bool UsingSimd() { return CpuHasAvx2Fma() && !force_scalar.load(std::memory_order_relaxed); }

}  // namespace pipeinfer::kernels
