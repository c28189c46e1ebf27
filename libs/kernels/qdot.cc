// The integer MatMul path (qdot.h): activation quantizers and the portable row kernel.
#include "kernels/qdot.h"

#include <cmath>
#include <cstring>

#include "kernels/formats.h"
#include "kernels/half.h"

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

// Q4_K super-block: returns d_w * d_x * sum_j sc_j * dot_j - dmin_w * d_x * sum_j m_j * xsum_j.
float DotQ4_K(const uint8_t* b, const int8_t* x, float dx, const int16_t* bsums) {
  const uint8_t* qs = b + 16;
  int32_t sumi = 0, summ = 0;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    ScaleMinK4(b + 4, j, &sc, &m);
    const int c = j / 2, shift = 4 * (j % 2);
    int32_t s = 0;
    for (int l = 0; l < 32; ++l) s += ((qs[32 * c + l] >> shift) & 0xf) * x[32 * j + l];
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

// Round to nearest, ties to even (as nearbyint in the default rounding mode) for |v| < 2^22,
// without a library call: adding 1.5 * 2^23 leaves the rounded integer in the low mantissa bits.
inline int RoundNearest(float v) {
  const float shifted = v + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  return (bits & 0x007fffff) - 0x00400000;
}

}  // namespace

int QuantActBlock(TensorType type) {
  switch (type) {
    case TensorType::kQ4_0:
    case TensorType::kQ8_0:
      return 32;
    case TensorType::kQ4_K:
    case TensorType::kQ6_K:
      return 256;
    default:
      return 0;
  }
}

void QuantizeQ8_0(const float* x, int64_t n, int8_t* qs, float* d) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32, qs += 32) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    d[b] = HalfBitsToFloat(FloatToHalfBits(amax / 127.0f));
    for (int j = 0; j < 32; ++j) qs[j] = static_cast<int8_t>(RoundNearest(x[j] * id));
  }
}

void QuantizeQ8_K(const float* x, int64_t n, int8_t* qs, float* d, int16_t* bsums) {
  for (int64_t b = 0; b < n / 256; ++b, x += 256, qs += 256, bsums += 16) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 256; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    if (amax == 0.0f) {
      d[b] = 0.0f;
      for (int j = 0; j < 256; ++j) qs[j] = 0;
      for (int j = 0; j < 16; ++j) bsums[j] = 0;
      continue;
    }
    const float iscale = -128.0f / max;
    for (int j = 0; j < 256; ++j) {
      const int v = RoundNearest(iscale * x[j]);
      qs[j] = static_cast<int8_t>(v > 127 ? 127 : v);
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
        case TensorType::kQ4_K:
          for (int64_t b = 0; b < nb; ++b) {
            sum += DotQ4_K(row + b * 144, x + 256 * b, dx[b], a.bsums + (t * nb + b) * 16);
          }
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
