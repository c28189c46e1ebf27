// Row-interleaved layouts (interleave.h): the packers and the layout choice.
#include "kernels/interleave.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/simd.h"

namespace pipeinfer::kernels {

using gguf::TensorType;

namespace {

[[noreturn]] void BadInterleave(TensorType type, int64_t rows, int64_t cols, int interleave,
                                const char* why) {
  std::fprintf(stderr, "row interleave: %s (type %s, %lld x %lld, interleave %d)\n", why,
               gguf::TensorTypeName(static_cast<uint32_t>(type)).c_str(),
               static_cast<long long>(rows), static_cast<long long>(cols), interleave);
  std::abort();
}

bool IsFloat(TensorType type) {
  return type == TensorType::kF32 || type == TensorType::kF16 || type == TensorType::kBF16;
}

// Bytes of one row's part of a group block.
int BlockBytes(TensorType type) {
  const auto& info = gguf::TypeInfo(type);
  return static_cast<int>(GroupBlockCols(type) / info.block_size * info.type_size);
}

// A Q6_K file block: ql[128] and qh[64] (48 words), the 16 scales, d.
constexpr int kQ6_KWords = 48, kQ6_KScales = 192, kQ6_KD = 208;

}  // namespace

bool HasGroupedLayout(TensorType type) {
  return type == TensorType::kQ4_0 || type == TensorType::kQ8_0 || type == TensorType::kQ4_K ||
         type == TensorType::kQ6_K || IsFloat(type);
}

int64_t GroupBlockCols(TensorType type) {
  return IsFloat(type) ? kFloatGroupCols : gguf::TypeInfo(type).block_size;
}

int PreferredRowInterleave(TensorType type, int64_t rows, int64_t cols) {
  if (!PIPEINFER_KERNELS_X86 || ActiveSimdLevel() != SimdLevel::kAvx512 || rows < kGroupRows ||
      !HasGroupedLayout(type) || cols % GroupBlockCols(type) != 0) {
    return 1;
  }
  return IsFloat(type) || GetCpuFeatures().avx512_vnni ? kGroupRows : 1;
}

void InterleaveRows(const Matrix& plain, int interleave, uint8_t* out) {
  const auto bad = [&](const char* why) {
    BadInterleave(plain.type, plain.rows, plain.cols, interleave, why);
  };
  if (plain.interleave != 1) bad("the source is interleaved");
  if (interleave == 1) {
    std::memcpy(out, plain.data, static_cast<size_t>(plain.rows) * plain.row_bytes);
    return;
  }
  const auto& info = gguf::TypeInfo(plain.type);
  if (interleave != kGroupRows || !HasGroupedLayout(plain.type) ||
      plain.cols % GroupBlockCols(plain.type) != 0 ||
      plain.row_bytes != static_cast<size_t>(plain.cols / info.block_size * info.type_size)) {
    bad("unsupported layout");
  }
  const int64_t nb = plain.cols / GroupBlockCols(plain.type);
  const int64_t whole = plain.rows - plain.rows % kGroupRows;
  for (int64_t r = 0; r < whole; r += kGroupRows) {
    const uint8_t* rows[kGroupRows];
    for (int i = 0; i < kGroupRows; ++i) rows[i] = plain.data + (r + i) * plain.row_bytes;
    internal::PackGroup(plain.type, rows, nb, out + r * plain.row_bytes);
  }
  std::memcpy(out + whole * plain.row_bytes, plain.data + whole * plain.row_bytes,
              static_cast<size_t>(plain.rows - whole) * plain.row_bytes);  // the last rows
}

namespace internal {

void PackGroup(TensorType type, const uint8_t* const rows[kGroupRows], int64_t nb, uint8_t* out) {
  const int bytes = BlockBytes(type);
  const auto put = [&](int64_t b, int i, int from, int n, uint8_t* dst) {
    if (rows[i] == nullptr) {
      std::memset(dst, 0, n);
    } else {
      std::memcpy(dst, rows[i] + b * bytes + from, n);
    }
  };
  for (int64_t b = 0; b < nb; ++b, out += kGroupRows * bytes) {
    for (int i = 0; i < kGroupRows; ++i) {
      if (IsFloat(type)) {
        put(b, i, 0, bytes, out + bytes * i);
      } else if (type == TensorType::kQ4_0 || type == TensorType::kQ8_0) {
        put(b, i, 0, 2, out + 2 * i);
        for (int c = 0; c < (bytes - 2) / 4; ++c)
          put(b, i, 2 + 4 * c, 4, out + 16 + 32 * c + 4 * i);
      } else if (type == TensorType::kQ4_K) {
        for (int w = 0; w < bytes / 4; ++w) put(b, i, 4 * w, 4, out + 32 * w + 4 * i);
      } else if (type == TensorType::kQ6_K) {
        put(b, i, kQ6_KD, 2, out + 2 * i);
        for (int s = 0; s < 16; ++s) put(b, i, kQ6_KScales + s, 1, out + 16 + 8 * s + i);
        for (int w = 0; w < kQ6_KWords; ++w)
          put(b, i, 4 * w, 4, out + internal::Q6_KGroupWordAt(w) + 4 * i);
      } else {
        BadInterleave(type, 0, 0, kGroupRows, "no grouped layout");
      }
    }
  }
}

void UnpackRow(TensorType type, const uint8_t* group, int64_t nb, int i, uint8_t* out) {
  const int bytes = BlockBytes(type);
  for (int64_t b = 0; b < nb; ++b, group += kGroupRows * bytes, out += bytes) {
    if (IsFloat(type)) {
      std::memcpy(out, group + bytes * i, bytes);
    } else if (type == TensorType::kQ4_0 || type == TensorType::kQ8_0) {
      std::memcpy(out, group + 2 * i, 2);
      for (int c = 0; c < (bytes - 2) / 4; ++c) {
        std::memcpy(out + 2 + 4 * c, group + 16 + 32 * c + 4 * i, 4);
      }
    } else if (type == TensorType::kQ4_K) {
      for (int w = 0; w < bytes / 4; ++w) std::memcpy(out + 4 * w, group + 32 * w + 4 * i, 4);
    } else if (type == TensorType::kQ6_K) {
      std::memcpy(out + kQ6_KD, group + 2 * i, 2);
      for (int s = 0; s < 16; ++s) out[kQ6_KScales + s] = group[16 + 8 * s + i];
      for (int w = 0; w < kQ6_KWords; ++w) {
        std::memcpy(out + 4 * w, group + internal::Q6_KGroupWordAt(w) + 4 * i, 4);
      }
    } else {
      BadInterleave(type, 0, 0, kGroupRows, "no grouped layout");
    }
  }
}

void DeinterleaveRows(const Matrix& w, int64_t r0, int64_t n, uint8_t* out) {
  const int g = w.interleave;
  const int64_t whole = w.rows - w.rows % g;
  if (g != kGroupRows || !HasGroupedLayout(w.type) || r0 % g != 0 ||
      (n % g != 0 && r0 + n != w.rows)) {
    BadInterleave(w.type, w.rows, w.cols, g, "cannot restore these rows");
  }
  const int64_t nb = w.cols / GroupBlockCols(w.type);
  const size_t plain_row = static_cast<size_t>(nb * BlockBytes(w.type));
  for (int64_t r = r0; r < r0 + n; r += g) {
    if (r >= whole) {  // the last rows: file layout already (their bytes, without the row gaps)
      for (int64_t i = r; i < r0 + n; ++i) {
        std::memcpy(out + (i - r0) * plain_row, w.data + i * w.row_bytes, plain_row);
      }
      break;
    }
    const uint8_t* group = w.data + r * w.row_bytes;
    for (int i = 0; i < g; ++i) UnpackRow(w.type, group, nb, i, out + (r - r0 + i) * plain_row);
  }
}

}  // namespace internal
}  // namespace pipeinfer::kernels
