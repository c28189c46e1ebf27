// Tensor parallelism inside a stage on the CPU (EngineOptions.devices = "cpu,cpu"): every layer is
// split over shards by query/KV heads and FFN columns, and the shards' shares of W_o and W_down
// are summed by the in-process all-reduce. The split forward must equal the unsplit one:
//   * the first layer's keys and values, which come from row slices of W_k/W_v and therefore from
//     exactly the same dot products, must be bit-identical in the KV cache;
//   * logits (after layers where only the order of the W_o / W_down sums changed) must agree to
//     float rounding, and greedy decoding must choose the same tokens. That holds with exact
//     quantized math (F32 activations). With the default fast math the activations are rounded to
//     8 bits before every quantized product, so a last-bit difference can move an activation by
//     one quantization step; there the check is the same greedy tokens and logits within 2 %.
// Also: the splits that cannot be made are refused with a message that says why.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "engine/devices.h"
#include "engine/engine.h"
#include "engine/synth.h"
#include "kernels/kernels.h"
#include "testing/fixtures.h"

namespace pipeinfer::engine {
namespace {

using pipeinfer::testing::FixturePath;

std::unique_ptr<Engine> Make(const std::string& path, const std::string& devices) {
  auto m = StageModel::LoadFull(path);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return nullptr;
  EngineOptions o;
  o.threads = 2;
  o.kv_capacity_tokens = 256;
  o.devices = devices;
  auto e = Engine::Create(std::move(*m), o);
  EXPECT_TRUE(e.ok()) << devices << ": " << e.status();
  return e.ok() ? std::move(*e) : nullptr;
}

int32_t Argmax(const float* x, int64_t n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

struct Trace {
  std::vector<float> logits;  // every logit row produced, in order
  std::vector<int32_t> greedy;
  std::vector<uint8_t> layer0_kv;  // layer 0's K and V rows of the prompt's slots
};

// A 24-token prompt (all rows returned), 6 greedy steps, then a speculative tree of 4 tokens in a
// partition (root with two children, one grandchild).
Trace RunScript(Engine& e) {
  Trace t;
  const int64_t V = e.model().hparams().n_vocab;
  EXPECT_TRUE(e.kv().OpenSession(7).ok());
  std::vector<int32_t> prompt, rows;
  for (int i = 0; i < 24; ++i) {
    prompt.push_back(3 + (i * 53 + 11) % 250);
    rows.push_back(i);
  }
  ForwardInput in;
  in.session = 7;
  in.tokens = prompt;
  in.output_rows = rows;
  auto out = e.Forward(in);
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return t;
  t.logits = out->logits;
  const kv::Sequence* seq = e.kv().Find(7, kv::KvCache::kCanonical);
  const size_t row_bytes = e.kv().config().row_bytes();
  for (int32_t s = 0; s < seq->size(); ++s) {
    const uint8_t* k = e.kv().KeyRow(*seq, 0, s);
    const uint8_t* v = e.kv().ValueRow(*seq, 0, s);
    t.layer0_kv.insert(t.layer0_kv.end(), k, k + row_bytes);
    t.layer0_kv.insert(t.layer0_kv.end(), v, v + row_bytes);
  }
  int32_t next = Argmax(out->logits.data() + 23 * V, V);
  const std::vector<int32_t> last = {0};
  for (int step = 0; step < 6; ++step) {
    t.greedy.push_back(next);
    ForwardInput s;
    s.session = 7;
    s.tokens = std::span<const int32_t>(&t.greedy.back(), 1);
    s.output_rows = last;
    auto o = e.Forward(s);
    EXPECT_TRUE(o.ok()) << o.status();
    if (!o.ok()) return t;
    t.logits.insert(t.logits.end(), o->logits.begin(), o->logits.end());
    next = Argmax(o->logits.data(), V);
  }
  EXPECT_TRUE(e.kv().Fork(7, 1, kv::KvCache::kCanonical, -1, seq->size()).ok());
  const std::vector<int32_t> tree = {next, 40, 41, 42}, parents = {-1, 0, 0, 1}, all = {0, 1, 2, 3};
  ForwardInput spec;
  spec.session = 7;
  spec.partition = 1;
  spec.tokens = tree;
  spec.parents = parents;
  spec.output_rows = all;
  auto o = e.Forward(spec);
  EXPECT_TRUE(o.ok()) << o.status();
  if (o.ok()) t.logits.insert(t.logits.end(), o->logits.begin(), o->logits.end());
  return t;
}

void ExpectSplitEqualsUnsplit(const std::string& path, const std::string& devices,
                              kernels::QuantMath math) {
  const bool exact = math == kernels::QuantMath::kExact;
  SCOPED_TRACE(path + " on " + devices + (exact ? " (exact math)" : " (fast math)"));
  kernels::SetQuantMath(math);
  auto whole = Make(path, "cpu");
  auto split = Make(path, devices);
  ASSERT_TRUE(whole && split);
  EXPECT_EQ(split->n_shards(),
            static_cast<int32_t>(std::count(devices.begin(), devices.end(), ',')) + 1);
  const Trace a = RunScript(*whole);
  const Trace b = RunScript(*split);
  ASSERT_EQ(a.logits.size(), b.logits.size());
  ASSERT_FALSE(a.logits.empty());
  EXPECT_EQ(a.greedy, b.greedy);
  EXPECT_TRUE(a.layer0_kv == b.layer0_kv) << "layer 0 keys/values differ";
  double max_abs = 0, max_diff = 0;
  for (size_t i = 0; i < a.logits.size(); ++i) {
    max_abs = std::max(max_abs, static_cast<double>(std::fabs(a.logits[i])));
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(a.logits[i] - b.logits[i])));
  }
  // Exact math: only summation order differs (float, a few hundred terms per sum): far below
  // anything a wrong head, column or all-reduce would produce (those change logits by O(1)).
  EXPECT_LE(max_diff, (exact ? 1e-4 : 2e-2) * std::max(1.0, max_abs)) << "max |logit| " << max_abs;
  std::printf("%s on %s, %s math: max |d logit| %.3g (max |logit| %.3g)\n", path.c_str(),
              devices.c_str(), exact ? "exact" : "fast", max_diff, max_abs);
  kernels::SetQuantMath(kernels::QuantMath::kFast);
}

constexpr kernels::QuantMath kBoth[] = {kernels::QuantMath::kExact, kernels::QuantMath::kFast};

TEST(TensorParallel, FixtureModelsSplitOverTwoCpuShards) {
  for (const char* m : {"tiny-f32", "tiny-f16", "tiny-q8_0", "tiny-q4_0", "qwen2-tiny-f16"}) {
    for (kernels::QuantMath math : kBoth) {
      ExpectSplitEqualsUnsplit(FixturePath(std::string("models/") + m + ".gguf"), "cpu,cpu", math);
    }
  }
}

class SyntheticModel {
 public:
  explicit SyntheticModel(SynthSpec spec) {
    path_ = ::testing::TempDir() + "/tp_synth." + std::to_string(getpid()) + "." +
            std::string(gguf::TypeInfo(spec.type).name) + ".gguf";
    EXPECT_TRUE(WriteSyntheticModel(spec, path_).ok());
  }
  ~SyntheticModel() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// K-quants need 256-column cuts: a model wide enough for two shards, and an F16 one over four.
TEST(TensorParallel, SyntheticModelsSplitOverTwoAndFourShards) {
  SynthSpec spec;
  spec.n_layer = 2;
  spec.n_embd = 512;
  spec.n_ff = 1024;
  spec.n_head = 8;
  spec.n_head_kv = 4;
  spec.n_vocab = 300;
  for (gguf::TensorType t : {gguf::TensorType::kQ4_K, gguf::TensorType::kQ6_K}) {
    spec.type = t;
    SyntheticModel m(spec);
    for (kernels::QuantMath math : kBoth) ExpectSplitEqualsUnsplit(m.path(), "cpu,cpu", math);
  }
  spec.type = gguf::TensorType::kF16;
  SyntheticModel m(spec);
  ExpectSplitEqualsUnsplit(m.path(), "cpu,cpu,cpu,cpu", kernels::QuantMath::kFast);
}

absl::Status CreateStatus(const std::string& model, const std::string& devices) {
  auto m = StageModel::LoadFull(FixturePath("models/" + model + ".gguf"));
  if (!m.ok()) return m.status();
  EngineOptions o;
  o.kv_capacity_tokens = 64;
  o.devices = devices;
  return Engine::Create(std::move(*m), o).status();
}

TEST(TensorParallel, ImpossibleSplitsAreRefusedWithTheReason) {
  // One KV head (Llama-3 style GQA) cannot be split.
  absl::Status st = CreateStatus("llama3-tiny-f16", "cpu,cpu");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("KV heads"), std::string::npos) << st;
  // 128 attention-output columns per shard do not hold whole Q4_K blocks of 256.
  st = CreateStatus("tiny-q4_k_m", "cpu,cpu");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("multiple of 256"), std::string::npos) << st;
  // Three shards do not divide two KV heads.
  st = CreateStatus("tiny-f32", "cpu,cpu,cpu");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
}

TEST(Devices, ParsesDeviceLists) {
  auto d = ParseDevices("cuda:0, cuda:3");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->cuda);
  EXPECT_EQ(d->ordinals, (std::vector<int>{0, 3}));
  d = ParseDevices("cpu");
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->cuda);
  EXPECT_EQ(d->count(), 1);
  d = ParseDevices("cuda");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->ordinals, (std::vector<int>{0}));
  for (const char* bad : {"gpu", "cuda:x", "cuda:-1", "cpu,cuda:0", "cuda:1,cuda:1", ""}) {
    auto b = ParseDevices(bad);
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  for (const char* bad : {"gpu", "cuda:x", "cuda:-1"}) {
    EXPECT_NE(ParseDevices(bad).status().message().find(std::string("'") + bad + "'"),
              std::string::npos)
        << bad << ": the message names the whole entry";
  }
}

// Without a CUDA device (this build without the backend, or a machine without a GPU) a GPU
// stage is refused up front, naming the cause; with one, the engine is created.
TEST(Devices, CudaDeviceIsUsedOrRefusedClearly) {
  const absl::Status st = CreateStatus("tiny-f16", "cuda:0");
  if (st.ok()) GTEST_SKIP() << "a CUDA device is present (the cuda tests cover it)";
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("no CUDA device"), std::string::npos) << st;
}

}  // namespace
}  // namespace pipeinfer::engine
