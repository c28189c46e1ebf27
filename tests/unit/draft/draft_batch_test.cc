// Batched draft passes: sessions drafting at the same time share forward passes, and each gets
// exactly the logits of its own sequence computed alone by a plain engine (an independent
// reference, not the draft model's own code path); an interrupted request changes nothing that a
// later request could see; deferred adoption of committed prefixes keeps the logits exact.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "draft_server/draft_model.h"
#include "engine/engine.h"

namespace pipeinfer::draft_server {
namespace {

const std::string kModels = PIPEINFER_MODELS_DIR;

std::unique_ptr<DraftModel> LoadDemo() {
  DraftModelOptions o;
  o.path = kModels + "/demo-draft-q8_0.gguf";
  o.target_path = kModels + "/demo-target-q8_0.gguf";
  auto m = DraftModel::Load(o);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

// The last token's logits of `seq`, from a fresh engine over the same file (one run, alone).
std::vector<float> Reference(const std::vector<int32_t>& seq) {
  auto model = engine::StageModel::LoadFull(kModels + "/demo-draft-q8_0.gguf");
  EXPECT_TRUE(model.ok());
  engine::EngineOptions eo;
  eo.kv_capacity_tokens = 1024;
  auto e = engine::Engine::Create(std::move(*model), eo);
  EXPECT_TRUE(e.ok());
  EXPECT_TRUE((*e)->kv().OpenSession(1).ok());
  const int32_t last = static_cast<int32_t>(seq.size()) - 1;
  engine::ForwardInput in;
  in.session = 1;
  in.tokens = seq;
  in.output_rows = std::span<const int32_t>(&last, 1);
  auto out = (*e)->Forward(in);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? out->logits : std::vector<float>{};
}

std::vector<int32_t> Sequence(int32_t seed, size_t n) {
  std::vector<int32_t> s = {1};
  for (size_t i = 1; i < n; ++i)
    s.push_back(200 + (seed * 37 + static_cast<int32_t>(i) * 11) % 900);
  return s;
}

TEST(DraftBatch, ConcurrentSessionsShareExactPasses) {
  auto m = LoadDemo();
  ASSERT_TRUE(m);
  constexpr int kSessions = 6;
  constexpr int kSteps = 5;
  std::vector<std::vector<std::vector<float>>> got(kSessions);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int s = 0; s < kSessions; ++s) {
    threads.emplace_back([&, s] {
      SessionDrafter d(m.get(), static_cast<uint64_t>(s + 1));
      std::vector<int32_t> seq = Sequence(s, 6 + s);
      ++ready;
      while (ready.load() < kSessions) std::this_thread::yield();
      for (int step = 0; step < kSteps; ++step) {
        auto l = d.NextLogits(seq);
        ASSERT_TRUE(l.ok()) << l.status();
        got[s].emplace_back(l->begin(), l->end());
        seq.push_back(300 + s * 7 + step);  // the next "drafted" token
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int s = 0; s < kSessions; ++s) {
    std::vector<int32_t> seq = Sequence(s, 6 + s);
    for (int step = 0; step < kSteps; ++step) {
      const std::vector<float> want = Reference(seq);
      ASSERT_EQ(got[s][step].size(), want.size());
      EXPECT_EQ(std::memcmp(got[s][step].data(), want.data(), want.size() * 4), 0)
          << "session " << s << " step " << step;
      seq.push_back(300 + s * 7 + step);
    }
  }
  EXPECT_EQ(m->requests(), static_cast<uint64_t>(kSessions * kSteps));
  EXPECT_LT(m->passes(), m->requests());  // some passes served several sessions
}

TEST(DraftBatch, AnInterruptedRequestLeavesNoTrace) {
  auto m = LoadDemo();
  ASSERT_TRUE(m);
  SessionDrafter d(m.get(), 7);
  const std::vector<int32_t> prompt = Sequence(3, 12);
  ASSERT_TRUE(d.NextLogits(prompt).ok());
  d.Committed(prompt);  // adopted at the next pass
  // The worker may finish a request before its wait first looks at the interrupt (then it is
  // simply answered): try fresh continuations until one is interrupted.
  std::vector<int32_t> longer;
  bool interrupted = false;
  for (int32_t attempt = 0; attempt < 50 && !interrupted; ++attempt) {
    longer = prompt;
    for (int32_t t : {500, 501, 502, 503}) longer.push_back(t + 4 * attempt);
    d.SetInterrupt([] { return true; });  // a result is always waiting
    auto cut = d.NextLogits(longer);
    d.SetInterrupt(nullptr);
    if (absl::IsCancelled(cut.status())) {
      interrupted = true;
    } else {
      ASSERT_TRUE(cut.ok()) << cut.status();
    }
  }
  ASSERT_TRUE(interrupted) << "no request was ever interrupted in 50 attempts";
  // Another continuation of the prompt: exactly the reference.
  std::vector<int32_t> other = prompt;
  other.push_back(600);
  auto l = d.NextLogits(other);
  ASSERT_TRUE(l.ok()) << l.status();
  const std::vector<float> want = Reference(other);
  ASSERT_EQ(l->size(), want.size());
  EXPECT_EQ(std::memcmp(l->data(), want.data(), want.size() * 4), 0);
  // And the interrupted sequence itself, asked again.
  auto again = d.NextLogits(longer);
  ASSERT_TRUE(again.ok()) << again.status();
  const std::vector<float> want2 = Reference(longer);
  EXPECT_EQ(std::memcmp(again->data(), want2.data(), want2.size() * 4), 0);
}

}  // namespace
}  // namespace pipeinfer::draft_server
