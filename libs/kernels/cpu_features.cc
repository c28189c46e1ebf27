#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/kernels.h"
#include "kernels/simd.h"

#if PIPEINFER_KERNELS_X86
#include <cpuid.h>
#endif

namespace pipeinfer::kernels {
namespace {

std::atomic<bool> force_scalar{false};

bool DetectAvx2Fma() {
#if PIPEINFER_KERNELS_X86
  // __builtin_cpu_supports also checks that the OS saves the AVX state. F16C is read from CPUID
  // leaf 1 (ECX bit 29) directly: clang before 16 does not know the "f16c" feature name.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
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
