// Portable block decoders (layouts in formats.h) and DequantizeRow.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/formats.h"
#include "kernels/half.h"
#include "kernels/interleave.h"
#include "kernels/kernels.h"

namespace pipeinfer::kernels {
namespace internal {
namespace {

using gguf::TensorType;

void DecodeF32(const uint8_t* src, int64_t n, float* out) {
  if (n > 0) std::memcpy(out, src, n * sizeof(float));  // (empty rows may come with nullptr)
}

void DecodeF16(const uint8_t* src, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = LoadHalf(src + 2 * i);
}

void DecodeBF16(const uint8_t* src, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, sizeof(h));
    out[i] = Bf16BitsToFloat(h);
  }
}

void DecodeQ8_0(const uint8_t* src, int64_t n, float* out) {
  for (int64_t b = 0; b < n; ++b, src += 34, out += 32) {
    const float d = LoadHalf(src);
    const int8_t* qs = reinterpret_cast<const int8_t*>(src + 2);
    for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(qs[j]) * d;
  }
}

void DecodeQ4_0(const uint8_t* src, int64_t n, float* out) {
  for (int64_t b = 0; b < n; ++b, src += 18, out += 32) {
    const float d = LoadHalf(src);
    const uint8_t* qs = src + 2;
    for (int j = 0; j < 16; ++j) {
      out[j] = static_cast<float>((qs[j] & 0xf) - 8) * d;
      out[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

void DecodeQ4_1(const uint8_t* src, int64_t n, float* out) {
  for (int64_t b = 0; b < n; ++b, src += 20, out += 32) {
    const float d = LoadHalf(src), m = LoadHalf(src + 2);
    const uint8_t* qs = src + 4;
    for (int j = 0; j < 16; ++j) {
      out[j] = static_cast<float>(qs[j] & 0xf) * d + m;
      out[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

// Shared by Q5_0 (offset 16, no min) and Q5_1 (offset 0, min m).
inline void DecodeQ5Block(float d, float m, int offset, const uint8_t* qh_bytes, const uint8_t* qs,
                          bool has_min, float* out) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, sizeof(qh));
  for (int j = 0; j < 16; ++j) {
    const int q0 = ((qs[j] & 0xf) | (((qh >> j) & 1) << 4)) - offset;
    const int q1 = ((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - offset;
    if (has_min) {
      out[j] = static_cast<float>(q0) * d + m;
      out[j + 16] = static_cast<float>(q1) * d + m;
    } else {
      out[j] = static_cast<float>(q0) * d;
      out[j + 16] = static_cast<float>(q1) * d;
    }
  }
}

void DecodeQ5_0(const uint8_t* src, int64_t n, float* out) {
  for (int64_t b = 0; b < n; ++b, src += 22, out += 32) {
    DecodeQ5Block(LoadHalf(src), 0.0f, 16, src + 2, src + 6, false, out);
  }
}

void DecodeQ5_1(const uint8_t* src, int64_t n, float* out) {
  for (int64_t b = 0; b < n; ++b, src += 24, out += 32) {
    DecodeQ5Block(LoadHalf(src), LoadHalf(src + 2), 0, src + 4, src + 8, true, out);
  }
}

void DecodeQ2_K(const uint8_t* src, int64_t n, float* out) {
  for (int64_t b = 0; b < n; ++b, src += 84, out += 256) {
    const uint8_t* scales = src;
    const uint8_t* qs = src + 16;
    const float d = LoadHalf(src + 80), dmin = LoadHalf(src + 82);
    for (int h = 0; h < 2; ++h) {
      for (int j = 0; j < 4; ++j) {
        for (int half = 0; half < 2; ++half) {
          const int s = 8 * h + 2 * j + half;
          const float dl = d * static_cast<float>(scales[s] & 0xf);
          const float ml = dmin * static_cast<float>(scales[s] >> 4);
          float* o = out + 16 * s;
          const uint8_t* q = qs + 32 * h + 16 * half;
          for (int l = 0; l < 16; ++l) o[l] = dl * static_cast<float>((q[l] >> (2 * j)) & 3) - ml;
        }
      }
    }
  }
}

void DecodeQ3_K(const uint8_t* src, int64_t n, float* out) {
  for (int64_t b = 0; b < n; ++b, src += 110, out += 256) {
    const uint8_t* hmask = src;
    const uint8_t* qs = src + 32;
    const float d = LoadHalf(src + 108);
    int sc[16];
    ScalesQ3K(src + 96, sc);
    for (int h = 0; h < 2; ++h) {
      for (int j = 0; j < 4; ++j) {
        const int bit = 4 * h + j;
        for (int half = 0; half < 2; ++half) {
          const int s = 8 * h + 2 * j + half;
          const float dl = d * static_cast<float>(sc[s]);
          float* o = out + 16 * s;
          for (int l = 16 * half; l < 16 * half + 16; ++l) {
            const int q = ((qs[32 * h + l] >> (2 * j)) & 3) - (((hmask[l] >> bit) & 1) ? 0 : 4);
            o[l - 16 * half] = dl * static_cast<float>(q);
          }
        }
      }
    }
  }
}

void DecodeQ4_K(const uint8_t* src, int64_t n, float* out) {
  for (int64_t b = 0; b < n; ++b, src += 144, out += 256) {
    const float d = LoadHalf(src), dmin = LoadHalf(src + 2);
    const uint8_t* scales = src + 4;
    const uint8_t* qs = src + 16;
    for (int c = 0; c < 4; ++c) {
      int sc0, m0, sc1, m1;
      ScaleMinK4(scales, 2 * c, &sc0, &m0);
      ScaleMinK4(scales, 2 * c + 1, &sc1, &m1);
      const float d0 = d * static_cast<float>(sc0), min0 = dmin * static_cast<float>(m0);
      const float d1 = d * static_cast<float>(sc1), min1 = dmin * static_cast<float>(m1);
      const uint8_t* q = qs + 32 * c;
      float* o = out + 64 * c;
      for (int l = 0; l < 32; ++l) {
        o[l] = d0 * static_cast<float>(q[l] & 0xf) - min0;
        o[l + 32] = d1 * static_cast<float>(q[l] >> 4) - min1;
      }
    }
  }
}

void DecodeQ5_K(const uint8_t* src, int64_t n, float* out) {
  for (int64_t b = 0; b < n; ++b, src += 176, out += 256) {
    const float d = LoadHalf(src), dmin = LoadHalf(src + 2);
    const uint8_t* scales = src + 4;
    const uint8_t* qh = src + 16;
    const uint8_t* qs = src + 48;
    for (int c = 0; c < 4; ++c) {
      int sc0, m0, sc1, m1;
      ScaleMinK4(scales, 2 * c, &sc0, &m0);
      ScaleMinK4(scales, 2 * c + 1, &sc1, &m1);
      const float d0 = d * static_cast<float>(sc0), min0 = dmin * static_cast<float>(m0);
      const float d1 = d * static_cast<float>(sc1), min1 = dmin * static_cast<float>(m1);
      const uint8_t* q = qs + 32 * c;
      float* o = out + 64 * c;
      for (int l = 0; l < 32; ++l) {
        const int q0 = (q[l] & 0xf) | (((qh[l] >> (2 * c)) & 1) << 4);
        const int q1 = (q[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
        o[l] = d0 * static_cast<float>(q0) - min0;
        o[l + 32] = d1 * static_cast<float>(q1) - min1;
      }
    }
  }
}

void DecodeQ6_K(const uint8_t* src, int64_t n, float* out) {
  for (int64_t b = 0; b < n; ++b, src += 210, out += 256) {
    const float d = LoadHalf(src + 208);
    const int8_t* scales = reinterpret_cast<const int8_t*>(src + 192);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = src + 64 * h;
      const uint8_t* qh = src + 128 + 32 * h;
      float* o = out + 128 * h;
      float ds[8];
      for (int s = 0; s < 8; ++s) ds[s] = d * static_cast<float>(scales[8 * h + s]);
      for (int l = 0; l < 32; ++l) {
        const int q0 = ((ql[l] & 0xf) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q1 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        o[l] = ds[l / 16] * static_cast<float>(q0);
        o[l + 32] = ds[2 + l / 16] * static_cast<float>(q1);
        o[l + 64] = ds[4 + l / 16] * static_cast<float>(q2);
        o[l + 96] = ds[6 + l / 16] * static_cast<float>(q3);
      }
    }
  }
}

constexpr Format kFormats[] = {
    {TensorType::kF32, 1, 4, DecodeF32},       {TensorType::kF16, 1, 2, DecodeF16},
    {TensorType::kBF16, 1, 2, DecodeBF16},     {TensorType::kQ8_0, 32, 34, DecodeQ8_0},
    {TensorType::kQ4_0, 32, 18, DecodeQ4_0},   {TensorType::kQ4_1, 32, 20, DecodeQ4_1},
    {TensorType::kQ5_0, 32, 22, DecodeQ5_0},   {TensorType::kQ5_1, 32, 24, DecodeQ5_1},
    {TensorType::kQ2_K, 256, 84, DecodeQ2_K},  {TensorType::kQ3_K, 256, 110, DecodeQ3_K},
    {TensorType::kQ4_K, 256, 144, DecodeQ4_K}, {TensorType::kQ5_K, 256, 176, DecodeQ5_K},
    {TensorType::kQ6_K, 256, 210, DecodeQ6_K},
};

}  // namespace

const Format* FindFormat(gguf::TensorType type) {
  for (const Format& f : kFormats) {
    if (f.type == type) return &f;
  }
  return nullptr;
}

}  // namespace internal

bool SupportsType(gguf::TensorType type) { return internal::FindFormat(type) != nullptr; }

void DequantizeRow(const Matrix& w, int64_t row, float* out) {
  const internal::Format* f = internal::FindFormat(w.type);
  const bool layout_ok =
      w.interleave == 1 || (w.interleave == kGroupRows && HasGroupedLayout(w.type));
  if (f == nullptr || w.cols % f->block != 0 || row < 0 || row >= w.rows || !layout_ok) {
    std::fprintf(stderr, "DequantizeRow: unsupported matrix (type %s, cols %lld) or row %lld\n",
                 gguf::TensorTypeName(static_cast<uint32_t>(w.type)).c_str(),
                 static_cast<long long>(w.cols), static_cast<long long>(row));
    std::abort();
  }
  const size_t row_bytes = w.row_bytes ? w.row_bytes : w.cols / f->block * f->bytes;
  if (w.interleave != 1 && row < w.rows - w.rows % w.interleave) {  // restore it from its group
    thread_local std::vector<uint8_t> plain;
    plain.resize(static_cast<size_t>(w.cols / f->block * f->bytes));
    const int64_t g = row - row % w.interleave;
    internal::UnpackRow(w.type, w.data + g * row_bytes, w.cols / GroupBlockCols(w.type),
                        static_cast<int>(row - g), plain.data());
    f->decode(plain.data(), w.cols / f->block, out);
    return;
  }
  f->decode(w.data + row * row_bytes, w.cols / f->block, out);
}

}  // namespace pipeinfer::kernels
