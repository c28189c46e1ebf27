// Layer kernels, paged KV storage and attention, collectives and the bandwidth probe on the device
// against CPU references (kernels:: vector ops, engine::RopeRotate, a naive attention).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/cuda_host.h"
#include "cuda/cuda_ops.h"
#include "engine/rope.h"
#include "kernels/kernels.h"
#include "unit/cuda/cuda_test_util.h"

namespace pipeinfer::cuda {
namespace {

using testing::CudaTest;
using testing::ExpectAllClose;
using testing::HostKv;
using testing::RandomFloats;

// Index of the first differing byte, or -1 (keeps failure output short for big buffers).
int64_t FirstDiff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  if (a.size() != b.size()) return 0;
  const auto it = std::mismatch(a.begin(), a.end(), b.begin());
  return it.first == a.end() ? -1 : static_cast<int64_t>(it.first - a.begin());
}

// The KV kernels' addressing, run on the host (cuda_host.h), against the mirror above: every
// written byte lands where the host cache's layout puts it, and nothing else changes.
TEST(CudaNoDevice, KvWriteAndCopySlotAddressingOnHost) {
  for (bool f16 : {true, false}) {
    std::mt19937 rng(f16 ? 31 : 32);
    HostKv want;
    want.layout = {/*n_layers=*/3, /*block_tokens=*/4, /*row_elems=*/10, f16};
    const KvLayout& L = want.layout;
    const int64_t n_blocks = 6, n_rows = 15, stride = 13;
    want.bytes.assign(n_blocks * L.block_bytes(), 0x5a);
    std::vector<uint8_t> got = want.bytes;
    std::vector<int64_t> slots(n_blocks * L.block_tokens);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    slots.resize(n_rows);
    slots[4] = -1;  // skipped
    const auto k = RandomFloats(n_rows * stride, rng), v = RandomFloats(n_rows * stride, rng);
    const internal::KvGeometry g = internal::KvGeometryOf(L);
    for (int32_t layer : {0, 2}) {
      internal::KvWriteOnHost(g, got.data(), layer, slots.data(), k.data(), stride, v.data(),
                              stride, n_rows);
      for (int64_t r = 0; r < n_rows; ++r) {
        if (slots[r] < 0) continue;
        want.WriteRow(want.KeyOffset(layer, slots[r]), &k[r * stride]);
        want.WriteRow(want.ValueOffset(layer, slots[r]), &v[r * stride]);
      }
      ASSERT_EQ(FirstDiff(got, want.bytes), -1) << (f16 ? "f16" : "f32") << " layer " << layer;
    }
    internal::KvCopySlotOnHost(g, got.data(), slots[9], slots[2]);
    for (int32_t l = 0; l < L.n_layers; ++l) {
      std::memcpy(&want.bytes[want.KeyOffset(l, slots[9])],
                  &want.bytes[want.KeyOffset(l, slots[2])], L.row_bytes());
      std::memcpy(&want.bytes[want.ValueOffset(l, slots[9])],
                  &want.bytes[want.ValueOffset(l, slots[2])], L.row_bytes());
    }
    ASSERT_EQ(FirstDiff(got, want.bytes), -1) << (f16 ? "f16" : "f32") << " copy slot";
  }
}

// RoPE's indexing and rounding, run on the host, against engine::RopeRotate: bit-identical.
TEST(CudaNoDevice, RopeOnHostMatchesEngineExactly) {
  std::mt19937 rng(6);
  const int64_t stride = 200;
  const int32_t n_heads = 3, head_dim = 64;
  const std::vector<int32_t> positions = {0, 1, 17, 1000, 77777};
  const int64_t n_rows = static_cast<int64_t>(positions.size());
  for (bool neox : {false, true}) {
    for (int32_t n_rot : {64, 32, 2}) {
      engine::RopeConfig cfg;
      cfg.style = neox ? gguf::RopeStyle::kNeox : gguf::RopeStyle::kNormal;
      cfg.n_rot = n_rot;
      const int half = n_rot / 2;
      std::vector<float> cos_v(n_rows * half), sin_v(n_rows * half);
      for (int64_t r = 0; r < n_rows; ++r) {
        engine::RopeAngles(cfg, positions[r], &cos_v[r * half], &sin_v[r * half]);
      }
      std::vector<float> got = RandomFloats(n_rows * stride, rng, -4.0f, 4.0f), want = got;
      for (int64_t r = 0; r < n_rows; ++r) {
        for (int32_t h = 0; h < n_heads; ++h) {
          engine::RopeRotate(cfg.style, n_rot, &cos_v[r * half], &sin_v[r * half],
                             &want[r * stride + h * head_dim]);
        }
      }
      internal::RopeOnHost(got.data(), n_rows, n_heads, head_dim, stride, n_rot, neox, cos_v.data(),
                           sin_v.data());
      EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float)))
          << (neox ? "neox" : "normal") << " n_rot " << n_rot;
    }
  }
}

TEST(CudaNoDevice, MeasureCopyBandwidthChecksArguments) {
  EXPECT_EQ(MeasureCopyBandwidth(0, 0, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MeasureCopyBandwidth(0, 1024, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

using CudaLayer = CudaTest;

TEST_F(CudaLayer, RmsNormRowsMatchesCpu) {
  std::mt19937 rng(1);
  const int64_t n_rows = 5, n = 4100;
  const auto x = RandomFloats(n_rows * n, rng, -3.0f, 3.0f);
  const auto w = RandomFloats(n, rng, 0.5f, 1.5f);
  std::vector<float> want(x.size());
  for (int64_t r = 0; r < n_rows; ++r)
    kernels::RmsNorm(&x[r * n], w.data(), n, 1e-5f, &want[r * n]);
  DeviceBuffer dx = ToDevice(x), dw = ToDevice(w), dout = ToDevice(std::vector<float>(x.size()));
  PI_CUDA_ASSERT_OK(
      RmsNormRows(stream(), dx.as<float>(), dw.as<float>(), n_rows, n, 1e-5f, dout.as<float>()));
  ExpectAllClose(FromDevice<float>(dout.get(), x.size()), want, 1e-5f, 1e-6f, "rmsnorm");
  // In place (d_out == d_x).
  PI_CUDA_ASSERT_OK(
      RmsNormRows(stream(), dx.as<float>(), dw.as<float>(), n_rows, n, 1e-5f, dx.as<float>()));
  ExpectAllClose(FromDevice<float>(dx.get(), x.size()), want, 1e-5f, 1e-6f, "rmsnorm in place");
}

TEST_F(CudaLayer, AddBiasRowsLeavesPaddingAlone) {
  std::mt19937 rng(2);
  const int64_t n_rows = 3, n = 64, stride = 70;
  const auto x = RandomFloats(n_rows * stride, rng);
  const auto b = RandomFloats(n, rng);
  std::vector<float> want = x;
  for (int64_t r = 0; r < n_rows; ++r) {
    for (int64_t j = 0; j < n; ++j) want[r * stride + j] += b[j];
  }
  DeviceBuffer dx = ToDevice(x), db = ToDevice(b);
  PI_CUDA_ASSERT_OK(AddBiasRows(stream(), dx.as<float>(), db.as<float>(), n_rows, n, stride));
  ExpectAllClose(FromDevice<float>(dx.get(), x.size()), want, 0.0f, 0.0f, "bias");
}

TEST_F(CudaLayer, HeadRmsNormMatchesCpuPerHead) {
  std::mt19937 rng(3);
  const int64_t n_rows = 3, stride = 300;
  const int32_t n_heads = 4, head_dim = 64;
  const auto x = RandomFloats(n_rows * stride, rng, -2.0f, 2.0f);
  const auto w = RandomFloats(head_dim, rng, 0.5f, 1.5f);
  std::vector<float> want = x;
  for (int64_t r = 0; r < n_rows; ++r) {
    for (int32_t h = 0; h < n_heads; ++h) {
      const size_t off = r * stride + h * head_dim;
      kernels::RmsNorm(&x[off], w.data(), head_dim, 1e-6f, &want[off]);
    }
  }
  DeviceBuffer dx = ToDevice(x), dw = ToDevice(w);
  PI_CUDA_ASSERT_OK(HeadRmsNorm(stream(), dx.as<float>(), dw.as<float>(), n_rows, n_heads, head_dim,
                                stride, 1e-6f));
  ExpectAllClose(FromDevice<float>(dx.get(), x.size()), want, 1e-5f, 1e-6f, "head rmsnorm");
}

TEST_F(CudaLayer, RopeMatchesEngineInBothStyles) {
  std::mt19937 rng(4);
  const int64_t stride = 200;
  const int32_t n_heads = 3, head_dim = 64;
  const std::vector<int32_t> positions = {0, 1, 17, 1000};
  const int64_t n_rows = static_cast<int64_t>(positions.size());
  for (bool neox : {false, true}) {
    for (int32_t n_rot : {64, 32}) {
      engine::RopeConfig cfg;
      cfg.style = neox ? gguf::RopeStyle::kNeox : gguf::RopeStyle::kNormal;
      cfg.n_rot = n_rot;
      cfg.freq_base = 10000.0f;
      const int half = n_rot / 2;
      std::vector<float> cos_v(n_rows * half), sin_v(n_rows * half);
      for (int64_t r = 0; r < n_rows; ++r) {
        engine::RopeAngles(cfg, positions[r], &cos_v[r * half], &sin_v[r * half]);
      }
      const auto x = RandomFloats(n_rows * stride, rng);
      std::vector<float> want = x;
      for (int64_t r = 0; r < n_rows; ++r) {
        for (int32_t h = 0; h < n_heads; ++h) {
          engine::RopeRotate(cfg.style, n_rot, &cos_v[r * half], &sin_v[r * half],
                             &want[r * stride + h * head_dim]);
        }
      }
      DeviceBuffer dx = ToDevice(x), dc = ToDevice(cos_v), ds = ToDevice(sin_v);
      PI_CUDA_ASSERT_OK(Rope(stream(), dx.as<float>(), n_rows, n_heads, head_dim, stride, n_rot,
                             neox, dc.as<float>(), ds.as<float>()));
      ExpectAllClose(FromDevice<float>(dx.get(), x.size()), want, 0.0f, 1e-6f,
                     neox ? "rope neox" : "rope normal");
    }
  }
  EXPECT_EQ(Rope(stream(), nullptr, 1, 1, 64, 64, 63, false, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);  // odd n_rot
}

// --- Paged KV and attention ------------------------------------------------------------------

class CudaKv : public CudaTest, public ::testing::WithParamInterface<bool> {};

TEST_P(CudaKv, WriteCopyAndTreeAttentionMatchCpu) {
  const bool f16 = GetParam();
  std::mt19937 rng(f16 ? 21 : 22);
  const int32_t n_heads = 8, n_kv_heads = 2, head_dim = 64, n_tokens = 300, n_blocks = 24;
  HostKv host;
  host.layout = {/*n_layers=*/2, /*block_tokens=*/16, /*row_elems=*/n_kv_heads * head_dim, f16};
  const KvLayout& L = host.layout;
  const int64_t re = L.row_elems;
  host.bytes.assign(n_blocks * L.block_bytes(), 0);
  DeviceBuffer kv = ToDevice(host.bytes);

  // Token i lives in physical slot phys[i] (scattered over the blocks); 84 slots stay free.
  std::vector<int64_t> all_slots(n_blocks * L.block_tokens);
  std::iota(all_slots.begin(), all_slots.end(), 0);
  std::shuffle(all_slots.begin(), all_slots.end(), rng);
  const std::vector<int64_t> phys(all_slots.begin(), all_slots.begin() + n_tokens);
  DeviceBuffer d_phys = ToDevice(phys);

  // K/V of both layers; layer 1's source rows are strided.
  const int64_t stride1 = re + 8;
  const auto k0 = RandomFloats(n_tokens * re, rng), v0 = RandomFloats(n_tokens * re, rng);
  const auto k1 = RandomFloats(n_tokens * stride1, rng), v1 = RandomFloats(n_tokens * stride1, rng);
  for (int64_t i = 0; i < n_tokens; ++i) {
    host.WriteRow(host.KeyOffset(0, phys[i]), &k0[i * re]);
    host.WriteRow(host.ValueOffset(0, phys[i]), &v0[i * re]);
    host.WriteRow(host.KeyOffset(1, phys[i]), &k1[i * stride1]);
    host.WriteRow(host.ValueOffset(1, phys[i]), &v1[i * stride1]);
  }
  DeviceBuffer dk0 = ToDevice(k0), dv0 = ToDevice(v0), dk1 = ToDevice(k1), dv1 = ToDevice(v1);
  PI_CUDA_ASSERT_OK(KvWrite(stream(), L, kv.get(), 0, d_phys.as<int64_t>(), dk0.as<float>(), re,
                            dv0.as<float>(), re, n_tokens));
  PI_CUDA_ASSERT_OK(KvWrite(stream(), L, kv.get(), 1, d_phys.as<int64_t>(), dk1.as<float>(),
                            stride1, dv1.as<float>(), stride1, n_tokens));
  ASSERT_EQ(FirstDiff(FromDevice<uint8_t>(kv.get(), host.bytes.size()), host.bytes), -1)
      << "KvWrite layout";

  // A token tree: a chain of 250 tokens, then branches hanging off its last ten.
  std::vector<int32_t> parent(n_tokens, -1);
  for (int32_t i = 1; i < n_tokens; ++i) {
    parent[i] = i < 250 ? i - 1 : std::uniform_int_distribution<int32_t>(240, i - 1)(rng);
  }
  const std::vector<int32_t> queries = {0, 5, 120, 249, 250, 263, 281, 299};
  const int64_t n_rows = static_cast<int64_t>(queries.size());
  std::vector<int32_t> offsets = {0};
  std::vector<int64_t> vis_slots;
  std::vector<std::vector<int32_t>> vis_tokens;
  int32_t max_visible = 0;
  for (int32_t qt : queries) {
    std::vector<int32_t> path;
    for (int32_t t = qt; t >= 0; t = parent[t]) path.push_back(t);
    std::reverse(path.begin(), path.end());
    for (int32_t t : path) vis_slots.push_back(phys[t]);
    offsets.push_back(static_cast<int32_t>(vis_slots.size()));
    max_visible = std::max(max_visible, static_cast<int32_t>(path.size()));
    vis_tokens.push_back(std::move(path));
  }
  const int64_t width = int64_t{n_heads} * head_dim, q_stride = width + 16, out_stride = width + 4;
  const auto q = RandomFloats(n_rows * q_stride, rng, -2.0f, 2.0f);

  // Naive CPU attention over layer 1 as stored (F16-rounded when f16).
  std::vector<float> want(n_rows * out_stride, 0.0f);
  const int group = n_heads / n_kv_heads;
  for (int64_t r = 0; r < n_rows; ++r) {
    for (int32_t h = 0; h < n_heads; ++h) {
      const int64_t kvo = int64_t{h / group} * head_dim;
      const std::vector<int32_t>& toks = vis_tokens[r];
      std::vector<double> score(toks.size());
      double mx = -INFINITY;
      for (size_t j = 0; j < toks.size(); ++j) {
        double dot = 0.0;
        for (int32_t d = 0; d < head_dim; ++d) {
          dot += double{q[r * q_stride + h * head_dim + d]} *
                 host.Elem(host.KeyOffset(1, phys[toks[j]]), kvo + d);
        }
        score[j] = dot / std::sqrt(double{head_dim});
        mx = std::max(mx, score[j]);
      }
      double den = 0.0;
      for (double& s : score) den += (s = std::exp(s - mx));
      for (int32_t d = 0; d < head_dim; ++d) {
        double acc = 0.0;
        for (size_t j = 0; j < toks.size(); ++j) {
          acc += score[j] * host.Elem(host.ValueOffset(1, phys[toks[j]]), kvo + d);
        }
        want[r * out_stride + h * head_dim + d] = static_cast<float>(acc / den);
      }
    }
  }
  DeviceBuffer dq = ToDevice(q), doffs = ToDevice(offsets), dslots = ToDevice(vis_slots);
  DeviceBuffer dout = ToDevice(std::vector<float>(n_rows * out_stride, 0.0f));
  DeviceBuffer
      workspace;  // few rows: the split path on most GPUs (cuda_attention_test covers both)
  PI_CUDA_ASSERT_OK(Attention(stream(), L, kv.get(), 1, dq.as<float>(), q_stride, n_rows, n_heads,
                              n_kv_heads, head_dim, doffs.as<int32_t>(), dslots.as<int64_t>(),
                              max_visible, dout.as<float>(), out_stride, &workspace));
  ExpectAllClose(FromDevice<float>(dout.get(), want.size()), want, 1e-4f, 2e-5f, "attention");

  // Copy one token's slot to a free slot, then a whole block over another one.
  const int64_t free_slot = all_slots[n_tokens + 3];
  PI_CUDA_ASSERT_OK(KvCopySlot(stream(), L, kv.get(), free_slot, phys[5]));
  for (int32_t l = 0; l < L.n_layers; ++l) {
    std::memcpy(&host.bytes[host.KeyOffset(l, free_slot)], &host.bytes[host.KeyOffset(l, phys[5])],
                L.row_bytes());
    std::memcpy(&host.bytes[host.ValueOffset(l, free_slot)],
                &host.bytes[host.ValueOffset(l, phys[5])], L.row_bytes());
  }
  ASSERT_EQ(FirstDiff(FromDevice<uint8_t>(kv.get(), host.bytes.size()), host.bytes), -1)
      << "KvCopySlot";
  const int64_t src_block = phys[7] / L.block_tokens;
  const int64_t dst_block = src_block == n_blocks - 1 ? 0 : n_blocks - 1;
  PI_CUDA_ASSERT_OK(KvCopyBlock(stream(), L, kv.get(), dst_block, src_block));
  std::memcpy(&host.bytes[dst_block * L.block_bytes()], &host.bytes[src_block * L.block_bytes()],
              L.block_bytes());
  ASSERT_EQ(FirstDiff(FromDevice<uint8_t>(kv.get(), host.bytes.size()), host.bytes), -1)
      << "KvCopyBlock";

  EXPECT_EQ(Attention(stream(), L, kv.get(), 1, dq.as<float>(), q_stride, n_rows, n_heads, 3,
                      head_dim, doffs.as<int32_t>(), dslots.as<int64_t>(), max_visible,
                      dout.as<float>(), out_stride, &workspace)
                .code(),
            absl::StatusCode::kInvalidArgument);  // 8 heads do not split into 3 groups
  EXPECT_EQ(KvWrite(stream(), L, kv.get(), 2, d_phys.as<int64_t>(), dk0.as<float>(), re,
                    dv0.as<float>(), re, 1)
                .code(),
            absl::StatusCode::kInvalidArgument);  // layer out of range
}

INSTANTIATE_TEST_SUITE_P(F16AndF32, CudaKv, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? std::string("f16") : std::string("f32");
                         });

// --- Element-wise ops ---------------------------------------------------------------------------

TEST_F(CudaLayer, SwiGluAddAndGatherMatchCpu) {
  std::mt19937 rng(5);
  const int64_t n = 5000;
  const auto gate = RandomFloats(n, rng, -6.0f, 6.0f), up = RandomFloats(n, rng);
  std::vector<float> want(n);
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    want[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
  DeviceBuffer dg = ToDevice(gate), du = ToDevice(up), dout = ToDevice(std::vector<float>(n));
  PI_CUDA_ASSERT_OK(SwiGlu(stream(), dg.as<float>(), du.as<float>(), dout.as<float>(), n));
  ExpectAllClose(FromDevice<float>(dout.get(), n), want, 2e-6f, 1e-7f, "swiglu");

  std::vector<float> sum(n);
  for (int64_t i = 0; i < n; ++i) sum[i] = gate[i] + up[i];
  PI_CUDA_ASSERT_OK(AddInPlace(stream(), dg.as<float>(), du.as<float>(), n));
  ExpectAllClose(FromDevice<float>(dg.get(), n), sum, 0.0f, 0.0f, "add");

  const int64_t width = 50;  // gather rows of 50 floats out of the 100 rows of `up`
  const std::vector<int32_t> rows = {7, 0, 99, 7, 42};
  std::vector<float> gathered;
  for (int32_t r : rows) gathered.insert(gathered.end(), &up[r * width], &up[(r + 1) * width]);
  DeviceBuffer drows = ToDevice(rows);
  PI_CUDA_ASSERT_OK(GatherRows(stream(), du.as<float>(), drows.as<int32_t>(),
                               static_cast<int64_t>(rows.size()), width, dout.as<float>()));
  ExpectAllClose(FromDevice<float>(dout.get(), gathered.size()), gathered, 0.0f, 0.0f, "gather");
  EXPECT_EQ(
      GatherRows(stream(), du.as<float>(), drows.as<int32_t>(), 1, width, du.as<float>()).code(),
      absl::StatusCode::kInvalidArgument);  // aliasing
}

// --- Collectives and measurement ---------------------------------------------------------------

TEST_F(CudaLayer, CommunicatorOfOneLeavesTheBufferUnchanged) {
  const std::vector<int> devices = {0};
  auto comm = Communicator::Create(devices);
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_EQ((*comm)->world(), 1);
  std::vector<float> v(1000);
  std::iota(v.begin(), v.end(), 0.5f);
  DeviceBuffer d = ToDevice(v);
  float* bufs[] = {d.as<float>()};
  Stream* streams[] = {&stream()};
  PI_CUDA_ASSERT_OK((*comm)->AllReduceSum(bufs, 1000, streams));
  ExpectAllClose(FromDevice<float>(d.get(), v.size()), v, 0.0f, 0.0f, "world 1");
}

TEST_F(CudaLayer, CommunicatorSumsAcrossAllDevices) {
  const auto count = DeviceCount();
  ASSERT_TRUE(count.ok());
  if (*count < 2) GTEST_SKIP() << "needs at least 2 devices, found " << *count;
  std::vector<int> devices(*count);
  std::iota(devices.begin(), devices.end(), 0);
  auto comm = Communicator::Create(devices);
  ASSERT_TRUE(comm.ok()) << comm.status();
#if defined(PIPEINFER_HAVE_NCCL)
  EXPECT_STREQ((*comm)->backend(), "nccl");
#else
  EXPECT_STREQ((*comm)->backend(), "copy");
#endif
  const int64_t n = 100003;
  std::vector<std::unique_ptr<Stream>> own;
  std::vector<DeviceBuffer> bufs;
  std::vector<float*> ptrs;
  std::vector<Stream*> streams;
  std::vector<float> want(n, 0.0f);
  for (int dev : devices) {
    auto s = Stream::Create(dev);
    ASSERT_TRUE(s.ok()) << s.status();
    std::vector<float> v(n);
    for (int64_t j = 0; j < n; ++j) v[j] = 0.5f * static_cast<float>(dev + 1) + (j % 7);
    for (int64_t j = 0; j < n; ++j) want[j] += v[j];
    auto b = DeviceBuffer::Allocate(dev, n * sizeof(float));
    ASSERT_TRUE(b.ok()) << b.status();
    PI_CUDA_ASSERT_OK(CopyToDevice(**s, b->get(), v.data(), n * sizeof(float)));
    PI_CUDA_ASSERT_OK((*s)->Synchronize());
    ptrs.push_back(b->as<float>());
    streams.push_back(s->get());
    bufs.push_back(std::move(*b));
    own.push_back(std::move(*s));
  }
  PI_CUDA_ASSERT_OK((*comm)->AllReduceSum(ptrs, n, streams));
  for (size_t i = 0; i < devices.size(); ++i) {
    PI_CUDA_ASSERT_OK(streams[i]->Synchronize());
    std::vector<float> got(n);
    PI_CUDA_ASSERT_OK(CopyToHost(*streams[i], got.data(), ptrs[i], n * sizeof(float)));
    PI_CUDA_ASSERT_OK(streams[i]->Synchronize());
    ExpectAllClose(got, want, 0.0f, 0.0f, "all-reduce sum");
  }
}

TEST_F(CudaLayer, MeasureCopyBandwidthIsPositive) {
  const auto bw = MeasureCopyBandwidth(0, size_t{64} << 20, 3);
  ASSERT_TRUE(bw.ok()) << bw.status();
  EXPECT_GT(*bw, 0.0);
  EXPECT_TRUE(std::isfinite(*bw));
}

TEST_F(CudaLayer, PinnedBufferAndCopiesRoundTrip) {
  auto pinned = PinnedBuffer::Allocate(4096);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  for (int i = 0; i < 1024; ++i) pinned->as<float>()[i] = static_cast<float>(i);
  auto a = DeviceBuffer::Allocate(0, 4096), b = DeviceBuffer::Allocate(0, 16);
  ASSERT_TRUE(a.ok() && b.ok());
  PI_CUDA_ASSERT_OK(b->Reserve(4096));  // grows
  EXPECT_GE(b->bytes(), 4096u);
  PI_CUDA_ASSERT_OK(CopyToDevice(stream(), a->get(), pinned->get(), 4096));
  PI_CUDA_ASSERT_OK(CopyOnDevice(stream(), b->get(), a->get(), 4096));
  PI_CUDA_ASSERT_OK(Memset(stream(), a->get(), 0, 4096));
  const auto back = FromDevice<float>(b->get(), 1024);
  for (int i = 0; i < 1024; ++i) ASSERT_EQ(back[i], static_cast<float>(i));
  ExpectAllClose(FromDevice<float>(a->get(), 1024), std::vector<float>(1024, 0.0f), 0.0f, 0.0f,
                 "memset");
}

}  // namespace
}  // namespace pipeinfer::cuda
