// The integer MatMul path (qdot.h): activation quantizers and the portable row kernel.
#include "kernels/qdot.h"

#include <cmath>
#include <cstring>

#include "kernels/act_quant.h"
#include "kernels/formats.h"
#include "kernels/half.h"
#include "kernels/simd.h"

namespace pipeinfer::kernels::internal {
namespace {

using gguf::TensorType;

// Integer dot of a Q4_0 block (d | 16 bytes) with 32 activation quants.
int32_t DotQ4_0(const uint8_t* b, const int8_t* x) {
  int32_t s = 0;
  for (int j = 0; j < 16; ++j) {
    s += ((b[2 + j] & 0xf) - 8) * x[j];
    s += ((b[2 + j] >> 4) - 8) * x[j + 16];
  }
  return s;
}

int32_t DotQ8_0(const uint8_t* b, const int8_t* x) {
  const int8_t* q = reinterpret_cast<const int8_t*>(b + 2);
  int32_t s = 0;
  for (int j = 0; j < 32; ++j) s += q[j] * x[j];
  return s;
}

// Q4_K (kQ5 false) / Q5_K super-block: returns d_w * d_x * sum_j sc_j * dot_j - dmin_w * d_x *
// sum_j m_j * xsum_j; Q5_K's weights have a fifth bit from qh.
template <bool kQ5>
float DotQ45_K(const uint8_t* b, const int8_t* x, float dx, const int16_t* bsums) {
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + (kQ5 ? 48 : 16);
  int32_t sumi = 0, summ = 0;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    ScaleMinK4(b + 4, j, &sc, &m);
    const int c = j / 2, shift = 4 * (j % 2);
    int32_t s = 0;
    for (int l = 0; l < 32; ++l) {
      int q = (qs[32 * c + l] >> shift) & 0xf;
      if (kQ5) q |= ((qh[l] >> j) & 1) << 4;
      s += q * x[32 * j + l];
    }
    sumi += sc * s;
    summ += m * (bsums[2 * j] + bsums[2 * j + 1]);
  }
  const float d = LoadHalf(b) * dx, dmin = LoadHalf(b + 2) * dx;
  return d * static_cast<float>(sumi) - dmin * static_cast<float>(summ);
}

// Q6_K super-block: d_w * d_x * sum_s sc_s * sum_{i in s} (q_i - 32) x_i.
float DotQ6_K(const uint8_t* b, const int8_t* x, float dx) {
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  int32_t sumi = 0;
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = b + 64 * h;
    const uint8_t* qh = b + 128 + 32 * h;
    int32_t sub[8] = {};  // the half's 8 sub-blocks of 16
    for (int l = 0; l < 32; ++l) {
      const int q0 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) - 32;
      const int q1 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      const int8_t* xh = x + 128 * h;
      sub[0 + l / 16] += q0 * xh[l];
      sub[2 + l / 16] += q1 * xh[l + 32];
      sub[4 + l / 16] += q2 * xh[l + 64];
      sub[6 + l / 16] += q3 * xh[l + 96];
    }
    for (int s = 0; s < 8; ++s) sumi += scales[8 * h + s] * sub[s];
  }
  return LoadHalf(b + 208) * dx * static_cast<float>(sumi);
}

// The 32 quants of a Q4_1 (hi5 == nullptr) or Q5 block: nibbles as Q4_0, plus 16 where bit j of
// the little-endian u32 at hi5 is set.
void Quants32(const uint8_t* qs, const uint8_t* hi5, int q[32]) {
  uint32_t qh = 0;
  if (hi5 != nullptr) std::memcpy(&qh, hi5, sizeof(qh));
  for (int j = 0; j < 16; ++j) {
    q[j] = (qs[j] & 0xf) | static_cast<int>(((qh >> j) & 1) << 4);
    q[j + 16] = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
  }
}

// Integer dot of 32 quants (minus `offset`) with 32 activation quants.
int32_t Dot32(const int q[32], int offset, const int8_t* x) {
  int32_t s = 0;
  for (int j = 0; j < 32; ++j) s += (q[j] - offset) * x[j];
  return s;
}

// Q4_1 / Q5_1 block with Q8_1 activations: d_w * d_x * sum(q x) + m_w * s_x.
float DotAffine32(const uint8_t* b, bool q5, const int8_t* x, float dx, float sx) {
  int q[32];
  Quants32(b + (q5 ? 8 : 4), q5 ? b + 4 : nullptr, q);
  return LoadHalf(b) * dx * static_cast<float>(Dot32(q, 0, x)) + LoadHalf(b + 2) * sx;
}

// Q2_K super-block: d_w * d_x * sum_s sc_s * dot_s - dmin_w * d_x * sum_s m_s * bsum_s.
float DotQ2_K(const uint8_t* b, const int8_t* x, float dx, const int16_t* bsums) {
  const uint8_t* qs = b + 16;
  int32_t sumi = 0, summ = 0;
  for (int s = 0; s < 16; ++s) {
    const int h = s / 8, j = (s % 8) / 2, l0 = 16 * (s % 2);
    int32_t dot = 0;
    for (int l = l0; l < l0 + 16; ++l)
      dot += ((qs[32 * h + l] >> (2 * j)) & 3) * x[16 * s + l - l0];
    sumi += (b[s] & 0xf) * dot;
    summ += (b[s] >> 4) * bsums[s];
  }
  const float d = LoadHalf(b + 80) * dx, dmin = LoadHalf(b + 82) * dx;
  return d * static_cast<float>(sumi) - dmin * static_cast<float>(summ);
}

// Q3_K super-block: d_w * d_x * sum_s sc_s * sum_{i in s} q_i x_i, q in [-4, 3].
float DotQ3_K(const uint8_t* b, const int8_t* x, float dx) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  int sc[16];
  ScalesQ3K(b + 96, sc);
  int32_t sumi = 0;
  for (int s = 0; s < 16; ++s) {
    const int h = s / 8, j = (s % 8) / 2, l0 = 16 * (s % 2);
    int32_t dot = 0;
    for (int l = l0; l < l0 + 16; ++l) {
      const int q = ((qs[32 * h + l] >> (2 * j)) & 3) - (((hmask[l] >> (4 * h + j)) & 1) ? 0 : 4);
      dot += q * x[16 * s + l - l0];
    }
    sumi += sc[s] * dot;
  }
  return LoadHalf(b + 108) * dx * static_cast<float>(sumi);
}

// Round to nearest, ties to even (as nearbyint in the default rounding mode) for |v| < 2^22,
// without a library call: adding 1.5 * 2^23 leaves the rounded integer in the low mantissa bits.
inline int RoundNearest(float v) {
  const float shifted = v + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  return (bits & 0x007fffff) - 0x00400000;
}

// max(m, |v|) as std::fmax(m, std::fabs(v)) gives it (a NaN v leaves m), without the libm call.
inline float MaxAbs(float m, float v) {
  const float a = std::fabs(v);
  return a > m ? a : m;
}

// The 32 quants of a Q8_0/Q8_1 block: q = nearbyint(x * 127 / amax); returns amax.
float Quantize32(const float* x, int8_t* qs) {
#if PIPEINFER_KERNELS_X86
  if (UsingSimd()) return avx2::Quantize32(x, qs);
#endif
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = MaxAbs(amax, x[j]);
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  for (int j = 0; j < 32; ++j) qs[j] = static_cast<int8_t>(RoundNearest(x[j] * id));
  return amax;
}

// A Q8_K block's 256 quants: max = the first value of the largest magnitude, iscale = top / max,
// q = min(127, nearbyint(iscale * x)); false (nothing written) when every value is 0 or NaN.
bool QuantizeQ8_KBlock(const float* x, float top, int8_t* qs, float* iscale) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < 256; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  if (amax == 0.0f) return false;
  *iscale = top / max;
  for (int j = 0; j < 256; ++j) {
    const int v = RoundNearest(*iscale * x[j]);
    qs[j] = static_cast<int8_t>(v > 127 ? 127 : v);
  }
  return true;
}

}  // namespace

int QuantActBlock(TensorType type) {
  switch (type) {
    case TensorType::kQ4_0:
    case TensorType::kQ4_1:
    case TensorType::kQ5_0:
    case TensorType::kQ5_1:
    case TensorType::kQ8_0:
      return 32;
    case TensorType::kQ2_K:
    case TensorType::kQ3_K:
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
    case TensorType::kQ6_K:
      return 256;
    default:
      return 0;
  }
}

bool QuantActHasSums(TensorType type) {
  return type == TensorType::kQ4_1 || type == TensorType::kQ5_1;
}

void QuantizeQ8_0(const float* x, int64_t n, int8_t* qs, float* d) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32, qs += 32) {
    d[b] = HalfBitsToFloat(FloatToHalfBits(Quantize32(x, qs) / 127.0f));
  }
}

void QuantizeQ8_1(const float* x, int64_t n, int8_t* qs, float* d, float* s) {
  const bool half = GetActQuantScheme() == ActQuantScheme::kLlamaCpp2024;
  for (int64_t b = 0; b < n / 32; ++b, x += 32, qs += 32) {
    const float db = Quantize32(x, qs) / 127.0f;
    int sum = 0;
    for (int j = 0; j < 32; ++j) sum += qs[j];
    const float sb = db * static_cast<float>(sum);
    d[b] = half ? HalfBitsToFloat(FloatToHalfBits(db)) : db;  // llama.cpp 2024: both f16
    s[b] = half ? HalfBitsToFloat(FloatToHalfBits(sb)) : sb;
  }
}

void QuantizeQ8_K(const float* x, int64_t n, int8_t* qs, float* d, int16_t* bsums) {
  const float top = GetActQuantScheme() == ActQuantScheme::kLlamaCpp2024 ? -127.0f : -128.0f;
  for (int64_t b = 0; b < n / 256; ++b, x += 256, qs += 256, bsums += 16) {
    float iscale = 0.0f;
#if PIPEINFER_KERNELS_X86
    const bool any = UsingSimd() ? avx2::QuantizeQ8_KBlock(x, top, qs, &iscale)
                                 : QuantizeQ8_KBlock(x, top, qs, &iscale);
#else
    const bool any = QuantizeQ8_KBlock(x, top, qs, &iscale);
#endif
    if (!any) {
      d[b] = 0.0f;
      for (int j = 0; j < 256; ++j) qs[j] = 0;
      for (int j = 0; j < 16; ++j) bsums[j] = 0;
      continue;
    }
    for (int j = 0; j < 16; ++j) {
      int s = 0;
      for (int l = 0; l < 16; ++l) s += qs[16 * j + l];
      bsums[j] = static_cast<int16_t>(s);
    }
    d[b] = 1.0f / iscale;
  }
}

void ScalarQuantRows(const Matrix& w, const QuantActs& a, int64_t n_tokens, float* y,
                     int64_t y_stride, int64_t r0, int64_t r1) {
  const int ab = QuantActBlock(w.type);
  const int64_t nb = w.cols / ab;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    for (int64_t t = 0; t < n_tokens; ++t) {
      const int8_t* x = a.qs + t * a.cols;
      const float* dx = a.d + t * nb;
      float sum = 0.0f;
      switch (w.type) {
        case TensorType::kQ4_0:
          for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* blk = row + b * 18;
            sum += LoadHalf(blk) * dx[b] * static_cast<float>(DotQ4_0(blk, x + 32 * b));
          }
          break;
        case TensorType::kQ8_0:
          for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* blk = row + b * 34;
            sum += LoadHalf(blk) * dx[b] * static_cast<float>(DotQ8_0(blk, x + 32 * b));
          }
          break;
        case TensorType::kQ5_0:
          for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* blk = row + b * 22;
            int q[32];
            Quants32(blk + 6, blk + 2, q);
            sum += LoadHalf(blk) * dx[b] * static_cast<float>(Dot32(q, 16, x + 32 * b));
          }
          break;
        case TensorType::kQ4_1:
        case TensorType::kQ5_1: {
          const bool q5 = w.type == TensorType::kQ5_1;
          const float* sx = a.s + t * nb;
          for (int64_t b = 0; b < nb; ++b) {
            sum += DotAffine32(row + b * (q5 ? 24 : 20), q5, x + 32 * b, dx[b], sx[b]);
          }
          break;
        }
        case TensorType::kQ2_K:
        case TensorType::kQ4_K:
        case TensorType::kQ5_K: {  // the K-quants with mins
          const auto dot = w.type == TensorType::kQ2_K   ? DotQ2_K
                           : w.type == TensorType::kQ4_K ? DotQ45_K<false>
                                                         : DotQ45_K<true>;
          const int64_t bytes = w.type == TensorType::kQ2_K   ? 84
                                : w.type == TensorType::kQ4_K ? 144
                                                              : 176;
          for (int64_t b = 0; b < nb; ++b) {
            sum += dot(row + b * bytes, x + 256 * b, dx[b], a.bsums + (t * nb + b) * 16);
          }
          break;
        }
        case TensorType::kQ3_K:
          for (int64_t b = 0; b < nb; ++b) sum += DotQ3_K(row + b * 110, x + 256 * b, dx[b]);
          break;
        case TensorType::kQ6_K:
          for (int64_t b = 0; b < nb; ++b) sum += DotQ6_K(row + b * 210, x + 256 * b, dx[b]);
          break;
        default:
          break;
      }
      y[t * y_stride + r] = sum;
    }
  }
}

}  // namespace pipeinfer::kernels::internal
