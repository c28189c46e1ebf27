// Attention over paged KV: the choice between the single-pass and the split-key path, the kernels'
// per-lane code run on the host (internal::AttentionOnHost) for every chunk count, and the device
// kernels (skipped without a GPU), all against a naive attention in double precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cuda/cuda_host.h"
#include "cuda/cuda_ops.h"
#include "unit/cuda/cuda_test_util.h"

namespace pipeinfer::cuda {
namespace {

using testing::CudaTest;
using testing::ExpectAllClose;
using testing::HostKv;
using testing::RandomFloats;

constexpr int32_t kLayer = 1;  // of 2: the other layer's rows sit in between

struct Shape {
  int32_t n_heads = 8, n_kv_heads = 2, head_dim = 64;
  bool f16 = true;
  std::string Name() const {
    return absl::StrCat(n_heads, "q", n_kv_heads, "kv_hd", head_dim, f16 ? "_f16" : "_f32");
  }
};

// A KV cache holding `n_tokens` tokens of a token tree in scattered physical slots, and query rows
// with their visibility lists (the path from the root to the query token). Rows are laid out with
// strides wider than the heads.
struct Scenario {
  Shape shape;
  HostKv kv;
  std::vector<int64_t> phys;  // token -> slot
  std::vector<int32_t> offsets = {0};
  std::vector<int64_t> vis_slots;
  int32_t max_visible = 0;
  int64_t n_rows = 0, q_stride = 0, out_stride = 0;
  std::vector<float> q;

  // Token i's parent: a chain of `chain` tokens, then tokens hanging off random earlier tokens of
  // the chain's last 10 or of the branches (a tree like the ones speculation builds).
  static Scenario Make(const Shape& shape, int32_t n_tokens, int32_t chain,
                       const std::vector<int32_t>& queries, uint32_t seed) {
    std::mt19937 rng(seed);
    Scenario sc;
    sc.shape = shape;
    const int32_t block_tokens = 16;
    const int64_t n_blocks = (n_tokens + 40) / block_tokens + 2;
    sc.kv.layout = {/*n_layers=*/2, block_tokens, shape.n_kv_heads * shape.head_dim, shape.f16};
    const KvLayout& L = sc.kv.layout;
    sc.kv.bytes.assign(n_blocks * L.block_bytes(), 0);
    std::vector<int64_t> all(n_blocks * block_tokens);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    sc.phys.assign(all.begin(), all.begin() + n_tokens);
    for (int32_t layer = 0; layer < L.n_layers; ++layer) {
      for (int64_t slot : sc.phys) {
        const auto k = RandomFloats(L.row_elems, rng), v = RandomFloats(L.row_elems, rng);
        sc.kv.WriteRow(sc.kv.KeyOffset(layer, slot), k.data());
        sc.kv.WriteRow(sc.kv.ValueOffset(layer, slot), v.data());
      }
    }
    std::vector<int32_t> parent(n_tokens, -1);
    for (int32_t i = 1; i < n_tokens; ++i) {
      parent[i] = i < chain
                      ? i - 1
                      : std::uniform_int_distribution<int32_t>(std::max(0, chain - 10), i - 1)(rng);
    }
    for (int32_t qt : queries) {
      std::vector<int32_t> path;
      for (int32_t t = qt; t >= 0; t = parent[t]) path.push_back(t);
      std::reverse(path.begin(), path.end());
      for (int32_t t : path) sc.vis_slots.push_back(sc.phys[t]);
      sc.offsets.push_back(static_cast<int32_t>(sc.vis_slots.size()));
      sc.max_visible = std::max(sc.max_visible, static_cast<int32_t>(path.size()));
    }
    sc.n_rows = static_cast<int64_t>(queries.size());
    const int64_t width = int64_t{shape.n_heads} * shape.head_dim;
    sc.q_stride = width + 16;
    sc.out_stride = width + 4;
    sc.q = RandomFloats(sc.n_rows * sc.q_stride, rng, -2.0f, 2.0f);
    return sc;
  }

  // Marks entry `e` of the visibility lists as a skipped slot (the kernels ignore negative slots).
  void Skip(size_t e) { vis_slots[e] = -1; }

  // Naive attention in double precision over the stored (F16-rounded when f16) rows.
  std::vector<float> Naive() const {
    const Shape& s = shape;
    std::vector<float> want(n_rows * out_stride, 0.0f);
    const int group = s.n_heads / s.n_kv_heads;
    for (int64_t r = 0; r < n_rows; ++r) {
      for (int32_t h = 0; h < s.n_heads; ++h) {
        const int64_t kvo = int64_t{h / group} * s.head_dim;
        std::vector<double> score;
        std::vector<int64_t> used;
        double mx = -INFINITY;
        for (int32_t j = offsets[r]; j < offsets[r + 1]; ++j) {
          if (vis_slots[j] < 0) continue;
          double dot = 0.0;
          for (int32_t d = 0; d < s.head_dim; ++d) {
            dot += double{q[r * q_stride + h * s.head_dim + d]} *
                   kv.Elem(kv.KeyOffset(kLayer, vis_slots[j]), kvo + d);
          }
          score.push_back(dot / std::sqrt(static_cast<double>(s.head_dim)));
          used.push_back(vis_slots[j]);
          mx = std::max(mx, score.back());
        }
        double den = 0.0;
        for (double& x : score) den += (x = std::exp(x - mx));
        for (int32_t d = 0; d < s.head_dim; ++d) {
          double acc = 0.0;
          for (size_t j = 0; j < used.size(); ++j) {
            acc += score[j] * kv.Elem(kv.ValueOffset(kLayer, used[j]), kvo + d);
          }
          want[r * out_stride + h * s.head_dim + d] = den > 0.0 ? static_cast<float>(acc / den) : 0;
        }
      }
    }
    return want;
  }

  std::vector<float> OnHost(int splits) const {
    std::vector<float> out(n_rows * out_stride, 0.0f);
    internal::AttentionOnHost(internal::KvGeometryOf(kv.layout), kv.bytes.data(), kLayer, q.data(),
                              q_stride, n_rows, shape.n_heads, shape.n_kv_heads, shape.head_dim,
                              offsets.data(), vis_slots.data(), splits, out.data(), out_stride);
    return out;
  }
};

// Query tokens of a 300-token tree (chain of 250): rows of 1, 2, 6 and 20 keys (fewer than the
// chunks of most chunk counts), the chain, and branches.
const std::vector<int32_t>& Queries() {
  static const std::vector<int32_t> q = {0, 1, 5, 19, 120, 249, 250, 263, 281, 299};
  return q;
}

std::vector<Shape> Shapes() {
  std::vector<Shape> v;
  for (bool f16 : {true, false}) {
    for (int32_t hd : {64, 128}) v.push_back({8, 2, hd, f16});
  }
  v.push_back({4, 4, 80, true});    // head_dim not a multiple of 32, no grouping
  v.push_back({2, 1, 256, false});  // the largest head
  return v;
}

// --- On the host ------------------------------------------------------------------------------

TEST(CudaNoDevice, AttentionSplitsPolicy) {
  using internal::AttentionSplits;
  // Decode of one row with 32 heads on 132 SMs: ~3 blocks per SM, chunks of >= 32 keys.
  EXPECT_EQ(AttentionSplits(1, 32, 512, 132), 13);
  EXPECT_EQ(AttentionSplits(1, 32, 200, 132), 6);   // 200 / 32 chunks at most
  EXPECT_EQ(AttentionSplits(1, 32, 63, 132), 1);    // too few keys for two chunks of 32
  EXPECT_EQ(AttentionSplits(1, 4, 8192, 132), 32);  // at most 32 chunks
  EXPECT_EQ(AttentionSplits(4, 32, 4096, 132), 4);  // 128 pairs: 396 / 128 -> 4
  // Twice the SM count of pairs or more: one pass.
  EXPECT_EQ(AttentionSplits(9, 32, 4096, 132), 1);
  EXPECT_EQ(AttentionSplits(512, 32, 4096, 132), 1);
  EXPECT_EQ(AttentionSplits(1, 32, 4096, 0), 1);  // unknown SM count
  EXPECT_EQ(AttentionSplits(0, 32, 4096, 132), 1);
}

// The kernels' own per-lane code, every chunk count, against the naive attention.
TEST(CudaNoDevice, AttentionOnHostMatchesNaiveForEverySplit) {
  uint32_t seed = 100;
  for (const Shape& shape : Shapes()) {
    Scenario sc = Scenario::Make(shape, 300, 250, Queries(), seed++);
    sc.Skip(sc.offsets[5] + 7);  // one skipped entry in the 121-key row
    const std::vector<float> want = sc.Naive();
    for (int splits : {1, 2, 3, 7, 32}) {
      const std::string what = absl::StrCat(shape.Name(), " splits ", splits);
      ExpectAllClose(sc.OnHost(splits), want, 1e-4f, 2e-5f, what.c_str());
    }
  }
}

// Chunk boundaries: rows of every length from 1 to 70 keys with chunk counts around them (empty
// chunks, chunks of one key, lengths that the count does not divide).
TEST(CudaNoDevice, AttentionOnHostChunkBoundaries) {
  const Shape shape{4, 2, 64, false};
  std::vector<int32_t> queries(70);
  std::iota(queries.begin(), queries.end(), 0);
  const Scenario sc = Scenario::Make(shape, 70, 70, queries, 7);
  const std::vector<float> want = sc.Naive();
  for (int splits = 1; splits <= 32; ++splits) {
    const std::string what = absl::StrCat("splits ", splits);
    ExpectAllClose(sc.OnHost(splits), want, 1e-4f, 2e-5f, what.c_str());
  }
}

// A row whose only keys are skipped gets zeros on both paths.
TEST(CudaNoDevice, AttentionOnHostRowWithNoKeysIsZero) {
  Scenario sc = Scenario::Make({8, 2, 64, true}, 40, 40, {3, 39}, 8);
  for (int32_t j = sc.offsets[0]; j < sc.offsets[1]; ++j) sc.Skip(j);
  const std::vector<float> want = sc.Naive();
  for (int64_t i = 0; i < sc.out_stride; ++i) ASSERT_EQ(want[i], 0.0f);
  for (int splits : {1, 3}) ExpectAllClose(sc.OnHost(splits), want, 1e-4f, 2e-5f, "no keys");
}

// --- On the device ------------------------------------------------------------------------------

class CudaAttention : public CudaTest {
 protected:
  struct Device {
    DeviceBuffer kv, q, offsets, slots, out;
  };
  Device Upload(const Scenario& sc) {
    Device d;
    d.kv = ToDevice(sc.kv.bytes);
    d.q = ToDevice(sc.q);
    d.offsets = ToDevice(sc.offsets);
    d.slots = ToDevice(sc.vis_slots);
    d.out = ToDevice(std::vector<float>(sc.n_rows * sc.out_stride, 0.0f));
    return d;
  }
  // Runs the public Attention (splits = 0) or AttentionWithSplits and reads the output back.
  std::vector<float> Run(const Scenario& sc, Device& d, int splits, DeviceBuffer* workspace) {
    const Shape& s = sc.shape;
    if (splits == 0) {
      PI_CUDA_EXPECT_OK(Attention(stream(), sc.kv.layout, d.kv.get(), kLayer, d.q.as<float>(),
                                  sc.q_stride, sc.n_rows, s.n_heads, s.n_kv_heads, s.head_dim,
                                  d.offsets.as<int32_t>(), d.slots.as<int64_t>(), sc.max_visible,
                                  d.out.as<float>(), sc.out_stride, workspace));
    } else {
      PI_CUDA_EXPECT_OK(internal::AttentionWithSplits(
          stream(), sc.kv.layout, d.kv.get(), kLayer, d.q.as<float>(), sc.q_stride, sc.n_rows,
          s.n_heads, s.n_kv_heads, s.head_dim, d.offsets.as<int32_t>(), d.slots.as<int64_t>(),
          sc.max_visible, d.out.as<float>(), sc.out_stride, splits, workspace));
    }
    return FromDevice<float>(d.out.get(), sc.n_rows * sc.out_stride);
  }
  int SmCount() {
    auto info = UseDevice(0);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->sm_count : 0;
  }
};

// Few rows: the split path (as chosen for this GPU, and with every forced chunk count).
TEST_F(CudaAttention, FewRowsSplitPathMatchesNaive) {
  uint32_t seed = 200;
  DeviceBuffer workspace;  // shared by every call on this stream, grown as needed
  for (const Shape& shape : Shapes()) {
    Scenario sc = Scenario::Make(shape, 300, 250, Queries(), seed++);
    sc.Skip(sc.offsets[5] + 7);
    const std::vector<float> want = sc.Naive();
    Device d = Upload(sc);
    const int64_t pairs = sc.n_rows * shape.n_heads;
    const int chosen =
        internal::AttentionSplits(sc.n_rows, shape.n_heads, sc.max_visible, SmCount());
    EXPECT_EQ(chosen > 1, pairs < 2 * SmCount()) << pairs << " pairs on " << SmCount() << " SMs";
    ExpectAllClose(Run(sc, d, 0, &workspace), want, 1e-4f, 2e-5f,
                   absl::StrCat(shape.Name(), " chosen ", chosen).c_str());
    for (int splits : {1, 2, 3, 7, 32}) {
      ExpectAllClose(Run(sc, d, splits, &workspace), want, 1e-4f, 2e-5f,
                     absl::StrCat(shape.Name(), " splits ", splits).c_str());
    }
    // Without a workspace: one pass.
    ExpectAllClose(Run(sc, d, 0, nullptr), want, 1e-4f, 2e-5f,
                   absl::StrCat(shape.Name(), " no workspace").c_str());
  }
}

// Many rows (a prefill): one pass as chosen, and the split path forced on the same rows.
TEST_F(CudaAttention, ManyRowsSinglePassMatchesNaive) {
  std::vector<int32_t> queries(400);
  std::iota(queries.begin(), queries.end(), 0);
  for (const Shape& shape : {Shape{8, 2, 128, true}, Shape{8, 8, 64, false}}) {
    const Scenario sc = Scenario::Make(shape, 400, 400, queries, 300);
    const std::vector<float> want = sc.Naive();
    Device d = Upload(sc);
    EXPECT_EQ(internal::AttentionSplits(sc.n_rows, shape.n_heads, sc.max_visible, SmCount()), 1);
    DeviceBuffer workspace;
    ExpectAllClose(Run(sc, d, 0, &workspace), want, 1e-4f, 2e-5f, shape.Name().c_str());
    EXPECT_EQ(workspace.get(), nullptr) << "one pass needs no scratch";
    ExpectAllClose(Run(sc, d, 5, &workspace), want, 1e-4f, 2e-5f,
                   (shape.Name() + " forced split").c_str());
  }
}

// d_out = d_q, as the engine may pass: each path reads the query heads before any output lands.
TEST_F(CudaAttention, OutputMayOverwriteTheQueries) {
  Scenario sc = Scenario::Make({8, 2, 128, true}, 300, 250, Queries(), 400);
  sc.out_stride = sc.q_stride;
  const std::vector<float> want = sc.Naive();
  DeviceBuffer workspace;
  for (int splits : {1, 4}) {
    Device d = Upload(sc);
    const Shape& s = sc.shape;
    PI_CUDA_ASSERT_OK(internal::AttentionWithSplits(
        stream(), sc.kv.layout, d.kv.get(), kLayer, d.q.as<float>(), sc.q_stride, sc.n_rows,
        s.n_heads, s.n_kv_heads, s.head_dim, d.offsets.as<int32_t>(), d.slots.as<int64_t>(),
        sc.max_visible, d.q.as<float>(), sc.q_stride, splits, &workspace));
    std::vector<float> got = FromDevice<float>(d.q.get(), sc.q.size());
    // Only the heads are written; the padding keeps the queries.
    for (int64_t r = 0; r < sc.n_rows; ++r) {
      for (int64_t i = int64_t{s.n_heads} * s.head_dim; i < sc.q_stride; ++i) {
        got[r * sc.q_stride + i] = 0.0f;
      }
    }
    ExpectAllClose(got, want, 1e-4f, 2e-5f, absl::StrCat("in place, splits ", splits).c_str());
  }
}

TEST_F(CudaAttention, ChecksArguments) {
  const Scenario sc = Scenario::Make({8, 2, 64, true}, 50, 50, {10, 49}, 500);
  Device d = Upload(sc);
  const Shape& s = sc.shape;
  auto with = [&](int splits, DeviceBuffer* ws) {
    return internal::AttentionWithSplits(
        stream(), sc.kv.layout, d.kv.get(), kLayer, d.q.as<float>(), sc.q_stride, sc.n_rows,
        s.n_heads, s.n_kv_heads, s.head_dim, d.offsets.as<int32_t>(), d.slots.as<int64_t>(),
        sc.max_visible, d.out.as<float>(), sc.out_stride, splits, ws);
  };
  DeviceBuffer workspace;
  EXPECT_EQ(with(0, &workspace).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with(33, &workspace).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with(2, nullptr).code(), absl::StatusCode::kInvalidArgument);  // no scratch
  PI_CUDA_EXPECT_OK(with(2, &workspace));
  const size_t bytes = workspace.bytes();
  EXPECT_GT(bytes, 0u);
  PI_CUDA_EXPECT_OK(with(32, &workspace));  // grows
  EXPECT_GT(workspace.bytes(), bytes);
  EXPECT_EQ(Attention(stream(), sc.kv.layout, d.kv.get(), kLayer, d.q.as<float>(), sc.q_stride,
                      sc.n_rows, s.n_heads, s.n_kv_heads, s.head_dim, d.offsets.as<int32_t>(),
                      d.slots.as<int64_t>(), 0, d.out.as<float>(), sc.out_stride, &workspace)
                .code(),
            absl::StatusCode::kInvalidArgument);  // max_visible 0
  PI_CUDA_EXPECT_OK(stream().Synchronize());
}

}  // namespace
}  // namespace pipeinfer::cuda
