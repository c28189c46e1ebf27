// Properties of the forward pass that need no reference data: splitting the layers over stages,
// batching, partitions and token trees give the same logits as the plain computation.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "engine/engine.h"
#include "engine/synth.h"
#include "kernels/kernels.h"
#include "testing/fixtures.h"

namespace pipeinfer::engine {
namespace {

using pipeinfer::testing::FixturePath;

const std::vector<int32_t> kPrompt = {1, 87, 107, 104, 229, 153, 132, 116, 120, 108, 102, 110};

std::shared_ptr<gguf::GgufFile> OpenShared(const std::string& model) {
  auto f = gguf::GgufFile::Open(FixturePath("models/" + model + ".gguf"));
  EXPECT_TRUE(f.ok()) << f.status();
  return std::shared_ptr<gguf::GgufFile>(std::move(*f));
}

std::unique_ptr<Engine> MakeEngine(std::shared_ptr<gguf::GgufFile> f, gguf::StageSpec spec,
                                   int threads = 2, kv::ElemType kv = kv::ElemType::kF16) {
  auto m = StageModel::FromFile(std::move(f), spec);
  EXPECT_TRUE(m.ok()) << m.status();
  EngineOptions o;
  o.threads = threads;
  o.kv_type = kv;
  o.kv_capacity_tokens = 256;
  auto e = Engine::Create(std::move(*m), o);
  EXPECT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE((*e)->kv().OpenSession(1).ok());
  return std::move(*e);
}

std::vector<int32_t> AllRows(size_t n) {
  std::vector<int32_t> r(n);
  for (size_t i = 0; i < n; ++i) r[i] = static_cast<int32_t>(i);
  return r;
}

ForwardOutput RunTokens(Engine& e, std::span<const int32_t> tokens, std::span<const int32_t> rows,
                        uint32_t part = 0, std::span<const int32_t> parents = {}) {
  ForwardInput in;
  in.session = 1;
  in.partition = part;
  in.tokens = tokens;
  in.output_rows = rows;
  in.parents = parents;
  auto out = e.Forward(in);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? std::move(*out) : ForwardOutput{};
}

double MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    m = std::max<double>(m, std::abs(a[i] - b[i]));
  return m;
}

TEST(EngineInvariance, LayerSplitIsBitIdentical) {
  for (const char* model : {"tiny-f32", "tiny-q4_k_m"}) {
    SCOPED_TRACE(model);
    auto f = OpenShared(model);
    auto full = MakeEngine(f, {0, 2, true, true});
    auto s0 = MakeEngine(f, {0, 1, true, false});
    auto s1 = MakeEngine(f, {1, 2, false, true});
    const auto rows = AllRows(kPrompt.size());
    const ForwardOutput ref = RunTokens(*full, kPrompt, rows);
    ForwardInput a;
    a.session = 1;
    a.tokens = kPrompt;
    auto h = s0->Forward(a);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_TRUE(h->logits.empty());
    ASSERT_EQ(h->hidden.size(), kPrompt.size() * 256);
    ForwardInput b;
    b.session = 1;
    b.hidden = h->hidden;
    b.output_rows = rows;
    auto o = s1->Forward(b);
    ASSERT_TRUE(o.ok()) << o.status();
    ASSERT_EQ(o->logits.size(), ref.logits.size());
    EXPECT_EQ(std::memcmp(o->logits.data(), ref.logits.data(), ref.logits.size() * 4), 0);
    // And the KV of each stage continues identically: one more token through both paths.
    const int32_t tok = 42, row = 0;
    const auto ref2 =
        RunTokens(*full, std::span<const int32_t>(&tok, 1), std::span<const int32_t>(&row, 1));
    a.tokens = std::span<const int32_t>(&tok, 1);
    auto h2 = s0->Forward(a);
    ASSERT_TRUE(h2.ok());
    b.hidden = h2->hidden;
    b.output_rows = std::span<const int32_t>(&row, 1);
    auto o2 = s1->Forward(b);
    ASSERT_TRUE(o2.ok());
    EXPECT_EQ(std::memcmp(o2->logits.data(), ref2.logits.data(), ref2.logits.size() * 4), 0);
  }
}

// Several split points on a deeper (synthetic, random-weight) model: every partition of 6 layers
// into 1..6 stages gives bit-identical logits.
TEST(EngineInvariance, EverySplitOfADeeperModelIsBitIdentical) {
  SynthSpec spec;
  spec.n_layer = 6;
  spec.n_embd = 128;
  spec.n_ff = 256;
  spec.n_head = 4;
  spec.n_head_kv = 2;
  spec.n_vocab = 300;
  spec.type = gguf::TensorType::kQ8_0;
  const std::string path = ::testing::TempDir() + "/split6.gguf";
  ASSERT_TRUE(WriteSyntheticModel(spec, path).ok());
  auto opened = gguf::GgufFile::Open(path);
  ASSERT_TRUE(opened.ok());
  std::shared_ptr<gguf::GgufFile> f(std::move(*opened));
  const auto rows = AllRows(kPrompt.size());
  auto full = MakeEngine(f, {0, 6, true, true});
  const ForwardOutput ref = RunTokens(*full, kPrompt, rows);
  for (const std::vector<uint32_t>& cuts :
       std::vector<std::vector<uint32_t>>{{1}, {3}, {5}, {2, 4}, {1, 2, 3, 4, 5}}) {
    std::vector<uint32_t> bounds = {0};
    bounds.insert(bounds.end(), cuts.begin(), cuts.end());
    bounds.push_back(6);
    std::vector<float> hidden;
    std::vector<float> logits;
    for (size_t i = 0; i + 1 < bounds.size(); ++i) {
      const bool first = i == 0, last = i + 2 == bounds.size();
      auto e = MakeEngine(f, {bounds[i], bounds[i + 1], first, last});
      ForwardInput in;
      in.session = 1;
      if (first) {
        in.tokens = kPrompt;
      } else {
        in.hidden = hidden;
      }
      if (last) in.output_rows = rows;
      auto o = e->Forward(in);
      ASSERT_TRUE(o.ok()) << o.status();
      hidden = o->hidden;
      logits = o->logits;
    }
    ASSERT_EQ(logits.size(), ref.logits.size());
    EXPECT_EQ(std::memcmp(logits.data(), ref.logits.data(), logits.size() * 4), 0)
        << "cuts " << cuts.size();
  }
  std::remove(path.c_str());
}

// Greedy token (argmax) of each row of n_vocab logits.
std::vector<int64_t> GreedyIds(const std::vector<float>& logits, size_t n_vocab) {
  std::vector<int64_t> ids;
  for (size_t r = 0; r + n_vocab <= logits.size(); r += n_vocab) {
    ids.push_back(std::max_element(logits.begin() + r, logits.begin() + r + n_vocab) -
                  (logits.begin() + r));
  }
  return ids;
}

class ScopedQuantMath {
 public:
  explicit ScopedQuantMath(kernels::QuantMath m) : old_(kernels::GetQuantMath()) {
    kernels::SetQuantMath(m);
  }
  ~ScopedQuantMath() { kernels::SetQuantMath(old_); }

 private:
  kernels::QuantMath old_;
};

class ScopedScalar {
 public:
  explicit ScopedScalar(bool scalar) { kernels::SetForceScalar(scalar); }
  ~ScopedScalar() { kernels::SetForceScalar(false); }
};

// Both QuantMath settings, on the SIMD kernels (where the CPU has them) and the portable ones.
std::vector<std::pair<kernels::QuantMath, bool>> Settings() {
  std::vector<std::pair<kernels::QuantMath, bool>> s;
  for (bool scalar : {false, true}) {
    if (!scalar && !kernels::CpuHasAvx2Fma()) continue;
    for (auto math : {kernels::QuantMath::kFast, kernels::QuantMath::kExact}) {
      s.emplace_back(math, scalar);
    }
  }
  return s;
}

// A prompt in one forward pass against its tokens fed one by one (each token attends to the same
// keys in the same order either way, and MatMul rows do not depend on the batch): bit-identical
// logits for F32/F16 weights, the same greedy tokens for quantized ones (both QuantMath settings,
// both kernel paths), also across thread counts (the batched engine uses 3 threads, the
// single-token one 1).
TEST(EngineInvariance, BatchedRunMatchesSingleTokenRuns) {
  struct Case {
    const char* model;
    bool bit_exact;
  };
  for (const Case& c : {Case{"tiny-f32", true}, Case{"tiny-f16", true}, Case{"tiny-q8_0", false},
                        Case{"tiny-q4_k_m", false}}) {
    for (const auto& [math, scalar] : Settings()) {
      ScopedQuantMath scoped(math);
      ScopedScalar scoped_scalar(scalar);
      SCOPED_TRACE(std::string(c.model) + (math == kernels::QuantMath::kFast ? " fast" : " exact") +
                   (scalar ? " portable" : " simd"));
      auto f = OpenShared(c.model);
      auto batched = MakeEngine(f, {0, 2, true, true}, 3);
      auto single = MakeEngine(f, {0, 2, true, true}, 1);
      const auto all = RunTokens(*batched, kPrompt, AllRows(kPrompt.size()));
      std::vector<float> one_by_one;
      for (int32_t t : kPrompt) {
        const int32_t row = 0;
        auto o =
            RunTokens(*single, std::span<const int32_t>(&t, 1), std::span<const int32_t>(&row, 1));
        one_by_one.insert(one_by_one.end(), o.logits.begin(), o.logits.end());
      }
      const size_t n_vocab = one_by_one.size() / kPrompt.size();
      ASSERT_GT(n_vocab, 0u);
      ASSERT_EQ(all.logits.size(), kPrompt.size() * n_vocab);
      ASSERT_EQ(one_by_one.size(), all.logits.size());
      if (c.bit_exact) {
        EXPECT_EQ(std::memcmp(all.logits.data(), one_by_one.data(), all.logits.size() * 4), 0)
            << "max |diff| " << MaxDiff(all.logits, one_by_one);
      }
      EXPECT_EQ(GreedyIds(all.logits, n_vocab), GreedyIds(one_by_one, n_vocab));
    }
  }
}

TEST(EngineInvariance, PartitionsAndTreesMatchLinearSequences) {
  auto f = OpenShared("tiny-f32");
  auto e = MakeEngine(f, {0, 2, true, true}, 2, kv::ElemType::kF32);
  auto lin = MakeEngine(f, {0, 2, true, true}, 2, kv::ElemType::kF32);
  RunTokens(*e, kPrompt, {});
  RunTokens(*lin, kPrompt, {});
  // Fork a partition at the end of the prompt and run a tree in it:
  //   t0=50 (root) -> t1=60 ; t2=70 (root, sibling of t0) -> t3=80
  ASSERT_TRUE(e->kv().Fork(1, 5, 0, -1, static_cast<int32_t>(kPrompt.size())).ok());
  const std::vector<int32_t> tree = {50, 60, 70, 80};
  const std::vector<int32_t> parents = {-1, 0, -1, 2};
  const auto t = RunTokens(*e, tree, AllRows(4), 5, parents);
  EXPECT_EQ(t.positions, (std::vector<int32_t>{12, 13, 12, 13}));
  // Branch A on a linear copy: [50, 60]; branch B: fork canonical, [70, 80].
  ASSERT_TRUE(lin->kv().Fork(1, 1, 0, -1, static_cast<int32_t>(kPrompt.size())).ok());
  ASSERT_TRUE(lin->kv().Fork(1, 2, 0, -1, static_cast<int32_t>(kPrompt.size())).ok());
  const std::vector<int32_t> a = {50, 60}, b = {70, 80};
  const auto la = RunTokens(*lin, a, AllRows(2), 1);
  const auto lb = RunTokens(*lin, b, AllRows(2), 2);
  std::vector<float> want(la.logits);
  want.insert(want.end(), lb.logits.begin(), lb.logits.end());
  EXPECT_LE(MaxDiff(t.logits, want), 1e-4);

  // Commit branch B's two tokens; the canonical sequence then continues like a linear run.
  ASSERT_TRUE(e->kv().Commit(1, 5, t.slots[3], 14).ok());
  ASSERT_TRUE(e->kv().Release(1, 5).ok());
  RunTokens(*lin, b, {});  // canonical of `lin` becomes prompt + [70, 80]
  const int32_t nxt = 90, row = 0;
  const auto c1 =
      RunTokens(*e, std::span<const int32_t>(&nxt, 1), std::span<const int32_t>(&row, 1));
  const auto c2 =
      RunTokens(*lin, std::span<const int32_t>(&nxt, 1), std::span<const int32_t>(&row, 1));
  EXPECT_EQ(c1.positions[0], 14);
  EXPECT_LE(MaxDiff(c1.logits, c2.logits), 1e-4);
  EXPECT_TRUE(e->kv().CheckInvariants().ok());
}

TEST(EngineInvariance, ThreadCountsAgree) {
  auto f = OpenShared("tiny-q6_k");
  auto one = MakeEngine(f, {0, 2, true, true}, 1);
  auto three = MakeEngine(f, {0, 2, true, true}, 3);
  const auto a = RunTokens(*one, kPrompt, AllRows(kPrompt.size()));
  const auto b = RunTokens(*three, kPrompt, AllRows(kPrompt.size()));
  ASSERT_EQ(a.logits.size(), b.logits.size());
  // The pool splits rows, never a row's sum: the bits cannot depend on the thread count.
  EXPECT_EQ(std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * 4), 0)
      << "max |diff| " << MaxDiff(a.logits, b.logits);
}

TEST(EngineInvariance, CancellationAndErrors) {
  auto f = OpenShared("tiny-f32");
  auto e = MakeEngine(f, {0, 2, true, true});
  int polls = 0;
  ForwardInput in;
  in.session = 1;
  in.tokens = kPrompt;
  in.cancelled = [&] { return ++polls > 1; };  // stop before the second layer
  auto o = e->Forward(in);
  ASSERT_TRUE(o.ok());
  EXPECT_TRUE(o->stopped);
  EXPECT_EQ(o->layers_done, 1);

  ForwardInput bad;
  bad.session = 1;
  const std::vector<int32_t> oob = {300};
  bad.tokens = oob;
  EXPECT_EQ(e->Forward(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.session = 99;
  bad.tokens = kPrompt;
  EXPECT_EQ(e->Forward(bad).status().code(), absl::StatusCode::kNotFound);

  // Context: the model's 512 positions; a run crossing it is refused before touching the KV.
  EngineOptions o2;
  o2.kv_capacity_tokens = 2048;
  o2.max_context = 20;
  auto small = Engine::Create(*StageModel::FromFile(f, {0, 2, true, true}), o2);
  ASSERT_TRUE(small.ok());
  ASSERT_TRUE((*small)->kv().OpenSession(1).ok());
  std::vector<int32_t> long_prompt(21, 5);
  ForwardInput lp;
  lp.session = 1;
  lp.tokens = long_prompt;
  auto r = (*small)->Forward(lp);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ((*small)->kv().Find(1, 0)->size(), 0);

  // KV exhaustion: capacity 32 tokens.
  EngineOptions o3;
  o3.kv_capacity_tokens = 32;
  auto tiny = Engine::Create(*StageModel::FromFile(f, {0, 2, true, true}), o3);
  ASSERT_TRUE(tiny.ok());
  ASSERT_TRUE((*tiny)->kv().OpenSession(1).ok());
  std::vector<int32_t> p33(33, 5);
  lp.tokens = p33;
  EXPECT_EQ((*tiny)->Forward(lp).status().code(), absl::StatusCode::kResourceExhausted);

  // A byte budget: tiny model, F16 KV: 2 layers x 2 (K,V) x 16 slots x 128 x 2 bytes per block.
  EngineOptions o4;
  o4.kv_capacity_bytes = 10 * 2 * 2 * 16 * 128 * 2 + 100;
  auto budget = Engine::Create(*StageModel::FromFile(f, {0, 2, true, true}), o4);
  ASSERT_TRUE(budget.ok());
  EXPECT_EQ((*budget)->kv().Stats().blocks_total, 10);
  o4.kv_capacity_bytes = 100;
  EXPECT_EQ(Engine::Create(*StageModel::FromFile(f, {0, 2, true, true}), o4).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pipeinfer::engine
