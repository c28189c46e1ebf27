#include <atomic>
#include <cstdlib>
#include <cstring>

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

QuantMath InitialQuantMath() {
  const char* env = std::getenv("PIPEINFER_QUANT_MATH");
  return env != nullptr && std::strcmp(env, "exact") == 0 ? QuantMath::kExact : QuantMath::kFast;
}

std::atomic<QuantMath>& QuantMathSetting() {
  static std::atomic<QuantMath> math{InitialQuantMath()};
  return math;
}

}  // namespace

void SetQuantMath(QuantMath math) { QuantMathSetting().store(math, std::memory_order_relaxed); }

QuantMath GetQuantMath() { return QuantMathSetting().load(std::memory_order_relaxed); }

bool CpuHasAvx2Fma() {
  static const bool has = DetectAvx2Fma();
  return has;
}

void SetForceScalar(bool force) { force_scalar.store(force, std::memory_order_relaxed); }

bool UsingSimd() { return CpuHasAvx2Fma() && !force_scalar.load(std::memory_order_relaxed); }

}  // namespace pipeinfer::kernels
