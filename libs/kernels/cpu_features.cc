// CPU feature detection, the kernel path in use (SimdLevel) and the QuantMath setting.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/kernels.h"
#include "kernels/simd.h"

#if PIPEINFER_KERNELS_X86
#include <cpuid.h>
#endif

namespace pipeinfer::kernels {
namespace {

#if PIPEINFER_KERNELS_X86
struct Cpuid {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};

Cpuid Leaf(unsigned leaf, unsigned sub) {
  Cpuid r;
  if (static_cast<unsigned>(__get_cpuid_max(0, nullptr)) < leaf) return r;
  __cpuid_count(leaf, sub, r.eax, r.ebx, r.ecx, r.edx);
  return r;
}

// XCR0: which register states the OS saves (XGETBV needs OSXSAVE; written as bytes so that no
// -mxsave flag is needed).
uint64_t Xcr0() {
  unsigned lo = 0, hi = 0;
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

bool Bit(unsigned v, int b) { return (v >> b & 1u) != 0; }
#endif

CpuFeatures Detect() {
  CpuFeatures f;
#if PIPEINFER_KERNELS_X86
  const Cpuid l1 = Leaf(1, 0);
  if (!Bit(l1.ecx, 27)) return f;  // no OSXSAVE: no AVX state at all
  const uint64_t xcr0 = Xcr0();
  const bool os_avx = (xcr0 & 0x6) == 0x6;                 // XMM + YMM
  const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask + ZMM_Hi256 + Hi16_ZMM
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;         // XTILECFG + XTILEDATA
  const Cpuid l7 = Leaf(7, 0), l7s1 = Leaf(7, 1);
  const bool avx = Bit(l1.ecx, 28), fma = Bit(l1.ecx, 12), f16c = Bit(l1.ecx, 29);
  const bool avx2 = Bit(l7.ebx, 5);
  f.avx2_fma_f16c = os_avx && avx && avx2 && fma && f16c;
  f.avx512 = f.avx2_fma_f16c && os_avx512 && Bit(l7.ebx, 16) /*F*/ && Bit(l7.ebx, 17) /*DQ*/ &&
             Bit(l7.ebx, 30) /*BW*/ && Bit(l7.ebx, 31) /*VL*/;
  f.avx512_vnni = f.avx512 && Bit(l7.ecx, 11);
  f.avx512_bf16 = f.avx512 && Bit(l7s1.eax, 5);
  f.amx = os_amx && Bit(l7.edx, 24) && Bit(l7.edx, 25) && Bit(l7.edx, 22);
#endif
  return f;
}

SimdLevel DetectBest() {
  const CpuFeatures& f = GetCpuFeatures();
#if PIPEINFER_KERNELS_X86
  if (f.avx512) return SimdLevel::kAvx512;
  if (f.avx2_fma_f16c) return SimdLevel::kAvx2;
#endif
  (void)f;
  return SimdLevel::kScalar;
}

SimdLevel InitialCap() {
  const char* env = std::getenv("PIPEINFER_KERNELS_PATH");
  if (env == nullptr || *env == '\0') return SimdLevel::kAvx512;
  const std::optional<SimdLevel> level = ParseSimdLevel(env);
  if (!level) {
    std::fprintf(stderr,
                 "PIPEINFER_KERNELS_PATH=%s is not scalar, avx2 or avx512; using the best path "
                 "of this CPU\n",
                 env);
    return SimdLevel::kAvx512;
  }
  return *level;
}

std::atomic<int>& Cap() {
  static std::atomic<int> cap{static_cast<int>(InitialCap())};
  return cap;
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

const CpuFeatures& GetCpuFeatures() {
  static const CpuFeatures f = Detect();
  return f;
}

std::string CpuFeatureString() {
  const CpuFeatures& f = GetCpuFeatures();
  std::string s;
  auto add = [&s](bool has, const char* name) {
    if (!has) return;
    if (!s.empty()) s += ' ';
    s += name;
  };
  add(f.avx2_fma_f16c, "avx2 fma f16c");
  add(f.avx512, "avx512(f bw dq vl)");
  add(f.avx512_vnni, "avx512_vnni");
  add(f.avx512_bf16, "avx512_bf16");
  add(f.amx, "amx(unused)");
  return s.empty() ? "none" : s;
}

SimdLevel BestSimdLevel() {
  static const SimdLevel best = DetectBest();
  return best;
}

void SetMaxSimdLevel(SimdLevel cap) {
  Cap().store(static_cast<int>(cap), std::memory_order_relaxed);
}

SimdLevel ActiveSimdLevel() {
  const int cap = Cap().load(std::memory_order_relaxed);
  const int best = static_cast<int>(BestSimdLevel());
  return static_cast<SimdLevel>(cap < best ? cap : best);
}

const char* SimdLevelName(SimdLevel level) {
  switch (level) {
    case SimdLevel::kAvx512:
      return "avx512";
    case SimdLevel::kAvx2:
      return "avx2";
    case SimdLevel::kScalar:
      break;
  }
  return "scalar";
}

const char* ActivePath() {
  const SimdLevel level = ActiveSimdLevel();
  if (level == SimdLevel::kAvx512 && GetCpuFeatures().avx512_vnni) return "avx512-vnni";
  return SimdLevelName(level);
}

std::optional<SimdLevel> ParseSimdLevel(std::string_view name) {
  if (name == "scalar" || name == "portable") return SimdLevel::kScalar;
  if (name == "avx2") return SimdLevel::kAvx2;
  if (name == "avx512") return SimdLevel::kAvx512;
  return std::nullopt;
}

bool CpuHasAvx2Fma() { return GetCpuFeatures().avx2_fma_f16c; }

void SetForceScalar(bool force) {
  SetMaxSimdLevel(force ? SimdLevel::kScalar : SimdLevel::kAvx512);
}

bool UsingSimd() { return ActiveSimdLevel() >= SimdLevel::kAvx2; }

}  // namespace pipeinfer::kernels
