// Row-interleaved Q4_0, Q8_0, Q4_K, Q6_K, F32, F16 and BF16 weights (kernels/interleave.h): the
// layouts against their definitions, the round trip, and every kernel path giving the same bits for
// the grouped copy as for the file layout (MatMul over batches, threads and column ranges;
// DequantizeRow).
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/interleave.h"
#include "kernels/kernels.h"
#include "kernels_test_util.h"

namespace pipeinfer::kernels {
namespace {

using gguf::TensorType;
using testing::Path;
using testing::Paths;
using testing::RandomRows;
using testing::ScopedPath;
using testing::ScopedQuantMath;

const TensorType kQuantGroupedTypes[] = {TensorType::kQ4_0, TensorType::kQ8_0, TensorType::kQ4_K,
                                         TensorType::kQ6_K};
const TensorType kFloatTypes[] = {TensorType::kF32, TensorType::kF16, TensorType::kBF16};
const TensorType kGroupedTypes[] = {TensorType::kQ4_0, TensorType::kQ8_0, TensorType::kQ4_K,
                                    TensorType::kQ6_K, TensorType::kF32,  TensorType::kF16,
                                    TensorType::kBF16};

// Bytes of one row's part of a group block.
size_t RowBlockBytes(TensorType type) {
  const auto& info = gguf::TypeInfo(type);
  return static_cast<size_t>(GroupBlockCols(type) / info.block_size * info.type_size);
}

Matrix Plain(TensorType type, const std::vector<uint8_t>& data, int64_t rows, int64_t cols) {
  const auto& info = gguf::TypeInfo(type);
  return Matrix{type, data.data(), rows, cols,
                static_cast<size_t>(cols / info.block_size * info.type_size)};
}

Matrix Grouped(const Matrix& plain, std::vector<uint8_t>* storage) {
  storage->assign(static_cast<size_t>(plain.rows) * plain.row_bytes, 0xee);
  InterleaveRows(plain, kGroupRows, storage->data());
  Matrix g = plain;
  g.data = storage->data();
  g.interleave = kGroupRows;
  return g;
}

// Checks a grouped copy of random rows against a layout definition: `check(blk, src, i)` compares
// one group block (at blk) with the matching block of file row i of the group (at src). The last
// kRows % 8 rows must be the file's, and deinterleaving must give the file back (also from row 16:
// a group and the last rows).
template <class Check>
void ExpectLayout(TensorType type, int64_t rows, int64_t cols, uint32_t seed, const Check& check) {
  const int64_t block_cols = GroupBlockCols(type), row_block = RowBlockBytes(type);
  std::mt19937 rng(seed);
  const std::vector<uint8_t> data = RandomRows(type, rows, cols, rng, false);
  const Matrix plain = Plain(type, data, rows, cols);
  std::vector<uint8_t> storage;
  const Matrix g = Grouped(plain, &storage);
  for (int64_t grp = 0; grp < rows / 8; ++grp) {
    for (int64_t b = 0; b < cols / block_cols; ++b) {
      const uint8_t* blk = g.data + grp * 8 * plain.row_bytes + b * 8 * row_block;
      for (int i = 0; i < 8; ++i) {
        SCOPED_TRACE(testing::TypeName(type) + " group " + std::to_string(grp) + " block " +
                     std::to_string(b) + " row " + std::to_string(i));
        check(blk, data.data() + (grp * 8 + i) * plain.row_bytes + b * row_block, i);
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
  }
  const int64_t whole = rows - rows % 8;
  EXPECT_EQ(0, std::memcmp(g.data + whole * plain.row_bytes, data.data() + whole * plain.row_bytes,
                           (rows - whole) * plain.row_bytes));
  std::vector<uint8_t> back(data.size());
  internal::DeinterleaveRows(g, 0, rows, back.data());
  EXPECT_EQ(back, data);
  internal::DeinterleaveRows(g, 16, rows - 16, back.data());
  EXPECT_EQ(0, std::memcmp(back.data(), data.data() + 16 * plain.row_bytes,
                           (rows - 16) * plain.row_bytes));
}

// Q4_0, Q8_0: the 8 scales (row i's at bytes 2i, 2i + 1), then chunk c, row i = quant bytes
// 4c..4c+3 of the row (4 chunks for Q4_0, 8 for Q8_0); 5 rows left in the file layout.
TEST(Interleave, Q4_0AndQ8_0GroupsFollowTheDefinition) {
  for (TensorType type : {TensorType::kQ4_0, TensorType::kQ8_0}) {
    const int chunks = (static_cast<int>(gguf::TypeInfo(type).type_size) - 2) / 4;
    ExpectLayout(type, 29, 32 * 5, 7, [&](const uint8_t* blk, const uint8_t* src, int i) {
      ASSERT_EQ(0, std::memcmp(blk + 2 * i, src, 2)) << "scale";
      for (int c = 0; c < chunks; ++c) {
        ASSERT_EQ(0, std::memcmp(blk + 16 + 32 * c + 4 * i, src + 2 + 4 * c, 4)) << "chunk " << c;
      }
    });
  }
}

// Q4_K: word w (bytes 4w..4w+3) of row i's block at byte 32w + 4i; 3 rows left.
TEST(Interleave, Q4_KGroupsFollowTheDefinition) {
  ExpectLayout(TensorType::kQ4_K, 19, 256 * 3, 8,
               [](const uint8_t* blk, const uint8_t* src, int i) {
                 for (int w = 0; w < 36; ++w) {
                   ASSERT_EQ(0, std::memcmp(blk + 32 * w + 4 * i, src + 4 * w, 4)) << "word " << w;
                 }
               });
}

// Q6_K (210-byte blocks: ql[128], qh[64], scales[16], d): d of row i at byte 2i of the group's
// block; scale s of row i at 16 + 8s + i; from byte 144, triples of 96 bytes: triple 8h + m holds
// ql words 16h + m and 16h + 8 + m, then qh word 8h + m (file word 32 + 8h + m), row i's word at
// 4i; 5 rows left.
TEST(Interleave, Q6_KGroupsFollowTheDefinition) {
  ExpectLayout(TensorType::kQ6_K, 21, 256 * 3, 12,
               [](const uint8_t* blk, const uint8_t* src, int i) {
                 ASSERT_EQ(0, std::memcmp(blk + 2 * i, src + 208, 2)) << "d";
                 for (int s = 0; s < 16; ++s)
                   ASSERT_EQ(blk[16 + 8 * s + i], src[192 + s]) << "scale " << s;
                 for (int h = 0; h < 2; ++h) {
                   for (int m = 0; m < 8; ++m) {
                     const uint8_t* tri = blk + 144 + 96 * (8 * h + m) + 4 * i;
                     const int file_words[3] = {16 * h + m, 16 * h + 8 + m, 32 + 8 * h + m};
                     for (int k = 0; k < 3; ++k) {
                       ASSERT_EQ(0, std::memcmp(tri + 32 * k, src + 4 * file_words[k], 4))
                           << "triple " << 8 * h + m << " word " << k;
                     }
                   }
                 }
               });
}

// F32/F16/BF16: block b (16 columns) holds row i's columns 16b .. 16b + 15 at byte 16 * i * (the
// value's size); 3 rows left.
TEST(Interleave, FloatGroupsFollowTheDefinition) {
  for (TensorType type : kFloatTypes) {
    const size_t rb = RowBlockBytes(type);
    ExpectLayout(type, 19, 16 * 5, 13, [&](const uint8_t* blk, const uint8_t* src, int i) {
      ASSERT_EQ(0, std::memcmp(blk + i * rb, src, rb));
    });
  }
}

TEST(Interleave, PreferredLayoutIsGroupsOnlyForTheGroupedTypesOnTheAvx512Paths) {
  const bool avx512 = BestSimdLevel() == SimdLevel::kAvx512;
  const bool vnni = avx512 && GetCpuFeatures().avx512_vnni;
  for (TensorType t : kQuantGroupedTypes) {
    EXPECT_EQ(PreferredRowInterleave(t, 4096, 4096), vnni ? 8 : 1);
    EXPECT_EQ(PreferredRowInterleave(t, 4100, 4096), vnni ? 8 : 1);  // 4 rows left over
    EXPECT_EQ(PreferredRowInterleave(t, 7, 4096), 1);                // no whole group
  }
  for (TensorType t : kFloatTypes) {
    EXPECT_EQ(PreferredRowInterleave(t, 4096, 4096), avx512 ? 8 : 1) << testing::TypeName(t);
    EXPECT_EQ(PreferredRowInterleave(t, 4100, 4096), avx512 ? 8 : 1) << testing::TypeName(t);
    EXPECT_EQ(PreferredRowInterleave(t, 4096, 4104), 1) << "columns not a multiple of 16";
    EXPECT_EQ(PreferredRowInterleave(t, 7, 4096), 1) << testing::TypeName(t);
  }
  for (TensorType t : {TensorType::kQ4_1, TensorType::kQ5_K, TensorType::kQ2_K}) {
    EXPECT_EQ(PreferredRowInterleave(t, 4096, 4096), 1) << testing::TypeName(t);
  }
  for (const Path& p : Paths()) {
    if (p.level == SimdLevel::kAvx512) continue;
    ScopedPath scoped(p);
    for (TensorType t : kGroupedTypes) {
      EXPECT_EQ(PreferredRowInterleave(t, 4096, 4096), 1) << p.name;
    }
  }
  if (!avx512) std::printf("[ note     ] no AVX-512 here: nothing is grouped by default\n");
  if (avx512 && !vnni) {
    std::printf("[ note     ] no AVX-512 VNNI here: only the float types are grouped\n");
  }
}

TEST(Interleave, DequantizedRowsAreTheFileLayoutsRows) {
  for (TensorType type : kGroupedTypes) {
    constexpr int64_t kRows = 19;
    const int64_t cols = GroupBlockCols(type) * 7;
    std::mt19937 rng(11);
    const std::vector<uint8_t> data = RandomRows(type, kRows, cols, rng, false);
    const Matrix plain = Plain(type, data, kRows, cols);
    std::vector<uint8_t> storage;
    const Matrix g = Grouped(plain, &storage);
    std::vector<float> want(cols), got(cols);
    for (int64_t r = 0; r < kRows; ++r) {
      DequantizeRow(plain, r, want.data());
      DequantizeRow(g, r, got.data());
      EXPECT_EQ(0, std::memcmp(want.data(), got.data(), cols * sizeof(float)))
          << testing::TypeName(type) << " row " << r;
    }
  }
}

// The grouped copy gives the file layout's bits on every path (grouped kernel, or rows restored
// for the paths that compute on the file layout): for the whole matrix and a column range (40
// rows: whole groups), and with 3 rows left over in the file layout (43 rows).
void ExpectGroupsEqualFileLayout(TensorType type, int64_t kRows, bool cuts) {
  constexpr int64_t kMaxTokens = 37;
  const int64_t block = GroupBlockCols(type), kCols = block * 13;
  std::mt19937 rng(5 + static_cast<uint32_t>(kRows));
  const std::vector<uint8_t> data = RandomRows(type, kRows, kCols, rng, true);
  const Matrix plain = Plain(type, data, kRows, kCols);
  std::vector<uint8_t> storage;
  const Matrix grouped = Grouped(plain, &storage);
  // Blocks 2..10 of every row.
  const auto columns = [&](Matrix m) {
    m.data += 2 * RowBlockBytes(m.type) * m.interleave;
    m.cols = block * 9;
    return m;
  };
  std::vector<float> x(kMaxTokens * kCols);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (float& v : x) v = unit(rng);
  ThreadPool pool1(1), pool3(3);
  for (QuantMath math : {QuantMath::kExact, QuantMath::kFast}) {
    ScopedQuantMath scoped_math(math);
    for (const Path& p : Paths()) {
      ScopedPath scoped_path(p);
      for (bool cut : {false, cuts}) {
        const Matrix a = cut ? columns(plain) : plain, b = cut ? columns(grouped) : grouped;
        for (int64_t n : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{4}, int64_t{5}, int64_t{8},
                          int64_t{9}, kMaxTokens}) {
          for (ThreadPool* pool : {&pool1, &pool3}) {
            std::vector<float> want(n * kRows, -1.0f), got(n * kRows, -2.0f);
            MatMul(a, x.data(), kCols, n, want.data(), kRows, *pool);
            MatMul(b, x.data(), kCols, n, got.data(), kRows, *pool);
            EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float)))
                << testing::TypeName(type) << " " << p.name
                << (math == QuantMath::kFast ? " fast" : " exact") << (cut ? " blocks 2.." : "")
                << " rows " << kRows << " tokens " << n << " threads " << pool->size();
          }
        }
      }
    }
  }
}

TEST(Interleave, MatMulOnGroupsEqualsMatMulOnTheFileLayout) {
  std::printf("[ paths    ] %s\n", testing::PathsNote().c_str());
  for (TensorType type : kGroupedTypes) {
    ExpectGroupsEqualFileLayout(type, 40, /*cuts=*/true);
    ExpectGroupsEqualFileLayout(type, 43, /*cuts=*/false);
  }
}

// The grouped kernels read the groups, not a restored copy: spoiling one row's value in the copy
// changes that row's result only. Row 11 = group 1, row 3 of the group; block 2's d (Q4_0, Q8_0,
// Q6_K: the f16 at 2 * 3; Q4_K: word 0 at 4 * 3) or first weight (F32, F16, BF16: at 3 * 16 * the
// value's size).
TEST(Interleave, SpoilingOneRowOfTheCopyChangesOnlyThatRow) {
  for (TensorType type : kGroupedTypes) {
    constexpr int64_t kRows = 16;
    const int64_t cols = GroupBlockCols(type) * 4;
    std::mt19937 rng(9);
    const std::vector<uint8_t> data = RandomRows(type, kRows, cols, rng, true);
    std::vector<uint8_t> storage;
    const Matrix grouped = Grouped(Plain(type, data, kRows, cols), &storage);
    std::vector<float> x(cols, 0.5f), before(kRows), after(kRows);
    ThreadPool pool(1);
    MatMul(grouped, x.data(), cols, 1, before.data(), kRows, pool);
    uint8_t* block = storage.data() + 8 * grouped.row_bytes + 2 * 8 * RowBlockBytes(type);
    if (type == TensorType::kF32) {
      float v;
      std::memcpy(&v, block + 3 * RowBlockBytes(type), 4);
      v = 2.0f * v + 1.0f;
      std::memcpy(block + 3 * RowBlockBytes(type), &v, 4);
    } else if (type == TensorType::kBF16) {
      block[3 * RowBlockBytes(type) + 1] ^= 0x40;  // an exponent bit
    } else {
      uint8_t* d = type == TensorType::kF16    ? block + 3 * RowBlockBytes(type)
                   : type == TensorType::kQ4_K ? block + 4 * 3
                                               : block + 2 * 3;
      const float old = HalfToFloat(testing::HalfBits(d));
      const uint16_t spoiled =
          FloatToHalf(type == TensorType::kF16 ? 2.0f * old + 1.0f : 2.0f * old);
      std::memcpy(d, &spoiled, 2);
    }
    MatMul(grouped, x.data(), cols, 1, after.data(), kRows, pool);
    for (int64_t r = 0; r < kRows; ++r) {
      if (r == 11) {
        EXPECT_NE(before[r], after[r]) << testing::TypeName(type);
      } else {
        EXPECT_EQ(before[r], after[r]) << testing::TypeName(type) << " row " << r;
      }
    }
  }
}

}  // namespace
}  // namespace pipeinfer::kernels
