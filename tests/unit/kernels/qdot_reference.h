// Naive references for the integer ("fast") MatMul path, written from the format descriptions and
// llama.cpp's scheme (not from the library): activation quantizers (Q8_0, Q8_1, Q8_K) and a dot
// product that splits every weight into integers (quant, sub-block scale, sub-block min) and block
// factors, sums the integer products in int64 and scales them in double.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/act_quant.h"
#include "kernels/kernels.h"
#include "kernels_test_util.h"

namespace pipeinfer::kernels::testing {

enum class ActFormat { kQ8_0, kQ8_1, kQ8_K };

inline ActFormat ActFormatFor(TensorType t) {
  switch (t) {
    case TensorType::kQ4_1:
    case TensorType::kQ5_1:
      return ActFormat::kQ8_1;
    case TensorType::kQ2_K:
    case TensorType::kQ3_K:
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
    case TensorType::kQ6_K:
      return ActFormat::kQ8_K;
    default:
      return ActFormat::kQ8_0;
  }
}
inline int ActBlock(TensorType t) { return ActFormatFor(t) == ActFormat::kQ8_K ? 256 : 32; }

// One token's quantized activations: x ~= d[b] * q[i] for i in block b; s[b] (Q8_1) = d[b] *
// sum of the block's q, rounded to float.
struct RefActs {
  std::vector<int> q;
  std::vector<double> d;
  std::vector<double> s;
};

// Q8_0 (32): d = amax / 127 rounded to f16; q = round-half-even(x * (127 / amax)).
// Q8_1 (32): the same q; d = amax / 127 and s = d * sum q, in float (llama.cpp 2023) or each
//            rounded to f16 (2024).
// Q8_K (256): max = the value of largest magnitude (the first one on ties); iscale = -128 / max
//             (2023) or -127 / max (2024); q = min(127, round-half-even(iscale * x)); d = 1 /
//             iscale.
inline RefActs RefQuantize(TensorType t, const float* x, int64_t n, ActQuantScheme scheme) {
  const bool y2024 = scheme == ActQuantScheme::kLlamaCpp2024;
  const ActFormat f = ActFormatFor(t);
  const int blk = ActBlock(t);
  RefActs a;
  a.q.assign(n, 0);
  a.d.assign(n / blk, 0.0);
  a.s.assign(n / blk, 0.0);
  for (int64_t b = 0; b < n / blk; ++b) {
    const float* xb = x + b * blk;
    float amax = 0, max = 0;
    for (int i = 0; i < blk; ++i) {
      if (std::fabs(xb[i]) > amax) {
        amax = std::fabs(xb[i]);
        max = xb[i];
      }
    }
    int* q = &a.q[b * blk];
    if (f == ActFormat::kQ8_K) {
      if (amax == 0) continue;
      const float iscale = (y2024 ? -127.0f : -128.0f) / max;
      a.d[b] = 1.0f / iscale;
      for (int i = 0; i < blk; ++i)
        q[i] = std::min(127, static_cast<int>(std::nearbyint(iscale * xb[i])));
      continue;
    }
    const float id = amax != 0 ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int i = 0; i < blk; ++i) {
      q[i] = static_cast<int>(std::nearbyint(xb[i] * id));
      sum += q[i];
    }
    const float d = amax / 127.0f;
    if (f == ActFormat::kQ8_0) {
      a.d[b] = pipeinfer::testing::HalfToFloat(FloatToHalf(d));
    } else {
      const float sum_d = d * static_cast<float>(sum);
      a.d[b] = y2024 ? pipeinfer::testing::HalfToFloat(FloatToHalf(d)) : d;
      a.s[b] = y2024 ? pipeinfer::testing::HalfToFloat(FloatToHalf(sum_d)) : sum_d;
    }
  }
  return a;
}

// The block factors D and M of RefParts.
inline void RefBlockFactors(TensorType t, const uint8_t* b, double* d, double* m) {
  *m = 0;
  switch (t) {
    case TensorType::kQ4_1:
    case TensorType::kQ5_1:
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
      *d = Half(b);
      *m = Half(b + 2);
      return;
    case TensorType::kQ2_K:
      *d = Half(b + 80);
      *m = Half(b + 82);
      return;
    case TensorType::kQ3_K:
      *d = Half(b + 108);
      return;
    case TensorType::kQ6_K:
      *d = Half(b + 208);
      return;
    default:
      *d = Half(b);
      return;
  }
}

struct RefDot {
  double value;      // the integer-path product
  double magnitude;  // sum of |each term| (D sc q and M m times d_x x_q), for tolerances
};

// Row `row` (cols weights) times one token's quantized activations. Per block: the integer sums
// S1 = sum sc q x_q and S2 = sum m x_q in int64, then D d_x S1 - M d_x S2 in double; Q4_1/Q5_1
// use the activations' s for the min term: D d_x S1 + M s.
inline RefDot RefIntegerDot(TensorType t, const uint8_t* row, int64_t cols, const RefActs& a) {
  const auto& info = gguf::TypeInfo(t);
  const int ab = ActBlock(t);
  const bool affine = t == TensorType::kQ4_1 || t == TensorType::kQ5_1;
  RefDot r{0, 0};
  for (int64_t blk = 0; blk < cols / info.block_size; ++blk) {
    const uint8_t* b = row + blk * info.type_size;
    double d, m;
    RefBlockFactors(t, b, &d, &m);
    int64_t s1 = 0, s2 = 0, a1 = 0, a2 = 0;
    for (int i = 0; i < static_cast<int>(info.block_size); ++i) {
      const int64_t c = blk * info.block_size + i;
      const RefParts p = RefWeightParts(t, b, i);
      s1 += static_cast<int64_t>(p.sc) * p.q * a.q[c];
      s2 += static_cast<int64_t>(p.m) * a.q[c];
      a1 += std::abs(static_cast<int64_t>(p.sc) * p.q * a.q[c]);
      a2 += std::abs(static_cast<int64_t>(p.m) * a.q[c]);
    }
    const double dx = a.d[blk * info.block_size / ab];  // blocks never straddle activation blocks
    if (affine) {
      r.value += d * dx * static_cast<double>(s1) + m * a.s[blk];
      r.magnitude += std::fabs(d * dx) * static_cast<double>(a1) + std::fabs(m * a.s[blk]);
    } else {
      r.value += d * dx * static_cast<double>(s1) - m * dx * static_cast<double>(s2);
      r.magnitude +=
          std::fabs(d * dx) * static_cast<double>(a1) + std::fabs(m * dx) * static_cast<double>(a2);
    }
  }
  return r;
}

}  // namespace pipeinfer::kernels::testing
