// Engine::Batch (continuous batching): runs of several sessions computed in one forward pass give
// exactly what each run gives alone (bit-identical logits and hidden states for float weights,
// the same greedy ids for quantized ones), a run cancelled between layers leaves the batch while
// the others complete, and two runs of one session are refused.
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "engine/engine.h"
#include "testing/fixtures.h"

namespace pipeinfer::engine {
namespace {

using pipeinfer::testing::FixturePath;

// One run of the test: a session, the tokens to feed (after its prefix) and how.
struct Job {
  uint64_t session = 0;
  std::vector<int32_t> prefix;   // fed alone beforehand, so the run has KV to attend to
  std::vector<int32_t> tokens;   // the run
  std::vector<int32_t> parents;  // empty = chain
  uint32_t partition = 0;        // != 0: a speculative partition forked from canonical
};

// Five jobs of different shapes: a prefill, decode steps after prefixes of several lengths, a
// token tree in a forked partition.
std::vector<Job> Jobs() {
  std::vector<Job> j(5);
  j[0] = {1, {}, {1, 87, 107, 104, 229, 153, 132, 116}, {}, 0};
  j[1] = {2, {1, 40, 41, 42}, {43}, {}, 0};
  j[2] = {3, {1, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65}, {66}, {}, 0};
  j[3] = {4, {1, 70, 71}, {72, 73, 74}, {}, 0};
  j[4] = {5, {1, 80, 81, 82, 83}, {90, 91, 92, 93}, {-1, 0, -1, 2}, 7};
  return j;
}

std::vector<int32_t> AllRows(size_t n) {
  std::vector<int32_t> r(n);
  for (size_t i = 0; i < n; ++i) r[i] = static_cast<int32_t>(i);
  return r;
}

class Engines {
 public:
  Engines(const std::string& model, const gguf::StageSpec& spec) {
    auto f = gguf::GgufFile::Open(FixturePath("models/" + model + ".gguf"));
    EXPECT_TRUE(f.ok()) << f.status();
    file_ = std::shared_ptr<gguf::GgufFile>(std::move(*f));
    spec_ = spec;
  }
  std::unique_ptr<Engine> Make() {
    auto m = StageModel::FromFile(file_, spec_);
    EXPECT_TRUE(m.ok()) << m.status();
    EngineOptions o;
    o.threads = 2;
    o.kv_capacity_tokens = 1024;
    auto e = Engine::Create(std::move(*m), o);
    EXPECT_TRUE(e.ok()) << e.status();
    return std::move(*e);
  }

 private:
  std::shared_ptr<gguf::GgufFile> file_;
  gguf::StageSpec spec_;
};

// Opens every job's session, feeds its prefix and forks its partition.
void PrepareSessions(Engine& e, const std::vector<Job>& jobs) {
  for (const Job& j : jobs) {
    ASSERT_TRUE(e.kv().OpenSession(j.session).ok());
    if (!j.prefix.empty()) {
      ForwardInput in;
      in.session = j.session;
      in.tokens = j.prefix;
      ASSERT_TRUE(e.Forward(in).ok());
    }
    if (j.partition != 0) {
      ASSERT_TRUE(
          e.kv().Fork(j.session, j.partition, 0, -1, static_cast<int32_t>(j.prefix.size())).ok());
    }
  }
}

ForwardInput InputOf(const Job& j, const std::vector<int32_t>& rows) {
  ForwardInput in;
  in.session = j.session;
  in.partition = j.partition;
  in.tokens = j.tokens;
  in.parents = j.parents;
  in.output_rows = rows;
  return in;
}

TEST(EngineBatch, BatchedRunsEqualRunsAlone) {
  for (const char* model : {"tiny-f32", "tiny-f16", "tiny-q8_0", "tiny-q4_k_m"}) {
    SCOPED_TRACE(model);
    const bool exact = std::string(model) == "tiny-f32" || std::string(model) == "tiny-f16";
    Engines engines(model, {0, 2, true, true});
    const std::vector<Job> jobs = Jobs();
    std::vector<std::vector<int32_t>> rows;
    for (const Job& j : jobs) rows.push_back(AllRows(j.tokens.size()));

    auto alone = engines.Make();
    PrepareSessions(*alone, jobs);
    std::vector<ForwardOutput> want;
    for (size_t i = 0; i < jobs.size(); ++i) {
      auto o = alone->Forward(InputOf(jobs[i], rows[i]));
      ASSERT_TRUE(o.ok()) << o.status();
      want.push_back(std::move(*o));
    }

    auto batched = engines.Make();
    PrepareSessions(*batched, jobs);
    Engine::Batch batch(*batched);
    for (size_t i = 0; i < jobs.size(); ++i) {
      ASSERT_TRUE(batch.Add(InputOf(jobs[i], rows[i])).ok());
    }
    EXPECT_EQ(batch.runs(), 5);
    EXPECT_EQ(batch.tokens(), 8 + 1 + 1 + 3 + 4);
    BatchStats stats;
    std::vector<ForwardOutput> got = batch.Run(&stats);
    ASSERT_EQ(got.size(), jobs.size());
    EXPECT_EQ(stats.rows_per_layer, (std::vector<int32_t>{17, 17}));
    const int64_t n_vocab = 259;
    for (size_t i = 0; i < jobs.size(); ++i) {
      SCOPED_TRACE(i);
      EXPECT_FALSE(got[i].stopped);
      EXPECT_EQ(got[i].positions, want[i].positions);
      EXPECT_EQ(got[i].slots, want[i].slots);
      ASSERT_EQ(got[i].logits.size(), want[i].logits.size());
      ASSERT_EQ(got[i].logits.size(), jobs[i].tokens.size() * n_vocab);
      if (exact) {
        EXPECT_EQ(std::memcmp(got[i].logits.data(), want[i].logits.data(),
                              got[i].logits.size() * sizeof(float)),
                  0);
      }
      for (size_t r = 0; r < jobs[i].tokens.size(); ++r) {
        auto argmax = [&](const std::vector<float>& v) {
          return std::max_element(v.begin() + r * n_vocab, v.begin() + (r + 1) * n_vocab) -
                 v.begin();
        };
        EXPECT_EQ(argmax(got[i].logits), argmax(want[i].logits)) << "row " << r;
      }
    }
    // The batched engine's KV continues like the other's: one more token per session, alone.
    for (const Job& j : jobs) {
      const int32_t tok = 42, row = 0;
      ForwardInput in;
      in.session = j.session;
      in.partition = j.partition;
      in.tokens = std::span<const int32_t>(&tok, 1);
      in.output_rows = std::span<const int32_t>(&row, 1);
      auto a = alone->Forward(in);
      auto b = batched->Forward(in);
      ASSERT_TRUE(a.ok() && b.ok());
      if (exact) {
        EXPECT_EQ(std::memcmp(a->logits.data(), b->logits.data(), n_vocab * 4), 0);
      }
    }
    EXPECT_TRUE(batched->kv().CheckInvariants().ok());
  }
}

TEST(EngineBatch, HiddenStatesOfAMiddleStageAreBitIdentical) {
  // Stage 0 of a 2-stage split (no head): the hidden states each run hands on.
  Engines engines("tiny-f32", {0, 1, true, false});
  const std::vector<Job> jobs = Jobs();
  auto alone = engines.Make();
  auto batched = engines.Make();
  PrepareSessions(*alone, jobs);
  PrepareSessions(*batched, jobs);
  Engine::Batch batch(*batched);
  for (const Job& j : jobs) ASSERT_TRUE(batch.Add(InputOf(j, {})).ok());
  std::vector<ForwardOutput> got = batch.Run();
  for (size_t i = 0; i < jobs.size(); ++i) {
    auto want = alone->Forward(InputOf(jobs[i], {}));
    ASSERT_TRUE(want.ok());
    ASSERT_EQ(got[i].hidden.size(), jobs[i].tokens.size() * 256);
    ASSERT_EQ(want->hidden.size(), got[i].hidden.size());
    EXPECT_EQ(std::memcmp(got[i].hidden.data(), want->hidden.data(), got[i].hidden.size() * 4), 0)
        << i;
    EXPECT_TRUE(got[i].logits.empty());
  }
}

TEST(EngineBatch, ACancelledRunLeavesTheBatchAndTheOthersComplete) {
  Engines engines("tiny-f32", {0, 2, true, true});
  const std::vector<Job> jobs = Jobs();
  auto alone = engines.Make();
  auto batched = engines.Make();
  PrepareSessions(*alone, jobs);
  PrepareSessions(*batched, jobs);
  Engine::Batch batch(*batched);
  // Job 3 (3 tokens) is cancelled after its first layer: the engine polls before every layer.
  int polls = 0;
  std::vector<std::vector<int32_t>> rows;
  for (const Job& j : jobs) rows.push_back(AllRows(j.tokens.size()));
  for (size_t i = 0; i < jobs.size(); ++i) {
    ForwardInput in = InputOf(jobs[i], rows[i]);
    if (i == 3) in.cancelled = [&polls] { return ++polls > 1; };
    ASSERT_TRUE(batch.Add(in).ok());
  }
  BatchStats stats;
  std::vector<ForwardOutput> got = batch.Run(&stats);
  EXPECT_EQ(stats.rows_per_layer, (std::vector<int32_t>{17, 14}));  // the batch shrank
  EXPECT_TRUE(got[3].stopped);
  EXPECT_EQ(got[3].layers_done, 1);
  EXPECT_TRUE(got[3].logits.empty());
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (i == 3) continue;
    auto want = alone->Forward(InputOf(jobs[i], rows[i]));
    ASSERT_TRUE(want.ok());
    EXPECT_FALSE(got[i].stopped);
    ASSERT_EQ(got[i].logits.size(), want->logits.size());
    EXPECT_EQ(std::memcmp(got[i].logits.data(), want->logits.data(), want->logits.size() * 4), 0)
        << i;
  }
}

TEST(EngineBatch, RefusesASecondRunOfASessionAndBadInputsAlone) {
  Engines engines("tiny-f32", {0, 2, true, true});
  auto e = engines.Make();
  ASSERT_TRUE(e->kv().OpenSession(1).ok());
  ASSERT_TRUE(e->kv().OpenSession(2).ok());
  const std::vector<int32_t> a = {1, 5, 6}, b = {1, 7}, bad = {1, 999};
  Engine::Batch batch(*e);
  ForwardInput in;
  in.session = 1;
  in.tokens = a;
  ASSERT_TRUE(batch.Add(in).ok());
  in.tokens = b;
  EXPECT_EQ(batch.Add(in).code(), absl::StatusCode::kInvalidArgument);  // same session again
  in.session = 2;
  in.tokens = bad;
  EXPECT_EQ(batch.Add(in).code(), absl::StatusCode::kInvalidArgument);  // token outside vocab
  EXPECT_EQ(e->kv().Find(2, 0)->size(), 0);                             // nothing appended
  in.tokens = b;
  ASSERT_TRUE(batch.Add(in).ok());
  EXPECT_EQ(batch.runs(), 2);
  std::vector<ForwardOutput> got = batch.Run();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].positions, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(got[1].positions, (std::vector<int32_t>{0, 1}));
}

}  // namespace
}  // namespace pipeinfer::engine
