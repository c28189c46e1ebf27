// Continuous batching in StageCore::Step: a 2-stage pipeline that batches the runs of 8 sessions
// gives bit-identical outcomes to one message at a time; the token cap lets verified runs go
// first while the oldest run always goes; one run per session per pass and barriers keep their
// order; a run cancelled mid-pass leaves the batch while the others complete; emulated padding
// is charged per pass.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "engine/synth.h"
#include "pipeinfer/v1/stage.pb.h"
#include "stage/stage_core.h"
#include "testing/fixtures.h"
#include "testing/stage_messages.h"
#include "testing/time_scale.h"

namespace pipeinfer::stage {
namespace {

using pipeinfer::testing::FixturePath;
using Clock = std::chrono::steady_clock;

std::shared_ptr<gguf::GgufFile> OpenFile(const std::string& path) {
  auto f = gguf::GgufFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  return std::shared_ptr<gguf::GgufFile>(std::move(*f));
}

std::unique_ptr<StageCore> MakeCore(std::shared_ptr<gguf::GgufFile> file, uint32_t index,
                                    uint32_t n_stages, StageCoreConfig c = {}) {
  auto hp = gguf::LlamaHParams::FromGguf(*file);
  auto split = gguf::SplitLayers(hp->n_layer, n_stages);
  EXPECT_TRUE(split.ok());
  auto m = engine::StageModel::FromFile(file, (*split)[index]);
  EXPECT_TRUE(m.ok()) << m.status();
  engine::EngineOptions o;
  o.threads = 2;
  o.kv_capacity_tokens = 4096;
  auto e = engine::Engine::Create(std::move(*m), o);
  EXPECT_TRUE(e.ok()) << e.status();
  c.stage_index = index;
  c.n_stages = n_stages;
  return std::make_unique<StageCore>(std::move(*e), c);
}

v1::StageDownstream OpenFull(uint64_t sid) {
  v1::StageDownstream m = Open(sid);
  m.mutable_session_open()->mutable_result()->set_kind(v1::RESULT_KIND_FULL);
  return m;
}

v1::StageDownstream Release(uint64_t sid, uint32_t part) {
  v1::StageDownstream m;
  m.mutable_kv()->set_session_id(sid);
  m.mutable_kv()->mutable_release()->add_partitions(part);
  return m;
}

v1::StageDownstream Barrier(uint64_t id) {
  v1::StageDownstream m;
  m.mutable_barrier()->set_barrier_id(id);
  return m;
}

std::deque<QueuedMessage> Queue(const std::vector<v1::StageDownstream>& msgs) {
  std::deque<QueuedMessage> q;
  for (const auto& m : msgs) q.push_back({std::make_unique<v1::StageDownstream>(m), Clock::now()});
  return q;
}

// 8 sessions: prefills of different lengths, 3 decode steps, a speculative run forked from
// canonical, then a commit (even sessions) or a release (odd ones) and one more plain run, all
// interleaved across sessions the way a controller's stream interleaves them.
std::vector<v1::StageDownstream> EightSessions() {
  std::vector<v1::StageDownstream> msgs;
  uint64_t rid = 1;
  std::map<uint64_t, int32_t> len;
  for (uint64_t s = 1; s <= 8; ++s) msgs.push_back(OpenFull(s));
  for (uint64_t s = 1; s <= 8; ++s) {
    std::vector<int32_t> prompt = {1};
    for (uint64_t i = 0; i < 3 + 2 * s; ++i) prompt.push_back(static_cast<int32_t>(30 + s * 7 + i));
    msgs.push_back(PlainRun(rid++, s, prompt, 0));
    len[s] = static_cast<int32_t>(prompt.size());
  }
  for (int step = 0; step < 3; ++step) {
    for (uint64_t s = 1; s <= 8; ++s) {
      msgs.push_back(PlainRun(rid++, s, {static_cast<int32_t>(100 + step + s)}, len[s]++));
    }
  }
  for (uint64_t s = 1; s <= 8; ++s) {
    msgs.push_back(SpecRun(rid++, s, 1, 0, static_cast<uint32_t>(len[s]),
                           {static_cast<int32_t>(150 + s), 151, static_cast<int32_t>(152 + s)}));
  }
  for (uint64_t s = 1; s <= 8; ++s) {
    if (s % 2 == 0) {
      msgs.push_back(Commit(s, 1, static_cast<uint32_t>(len[s] + 2), true));
      len[s] += 2;
    } else {
      msgs.push_back(Release(s, 1));
    }
    msgs.push_back(PlainRun(rid++, s, {static_cast<int32_t>(200 + s)}, len[s]++));
  }
  return msgs;
}

// One session's outcomes, in order, as comparable strings (results carry their full logits).
using Outcomes = std::map<uint64_t, std::vector<std::string>>;

void Collect(StageOutput& out, Outcomes* got, int* max_batch_runs) {
  for (auto& r : out.results) {
    uint64_t sid = r->has_result() ? r->result().session_id() : r->tombstone().session_id();
    if (r->has_result()) {
      for (const auto& t : r->result().trace()) {
        *max_batch_runs = std::max<int>(*max_batch_runs, static_cast<int>(t.batch_runs()));
      }
      r->mutable_result()->clear_trace();  // timings differ; the rest must not
    }
    (*got)[sid].push_back(r->SerializeAsString());
  }
}

TEST(StageBatch, BatchedPipelineGivesBitIdenticalOutcomes) {
  for (const char* model : {"tiny-f32", "tiny-f16"}) {
    SCOPED_TRACE(model);
    auto file = OpenFile(FixturePath(std::string("models/") + model + ".gguf"));
    const std::vector<v1::StageDownstream> msgs = EightSessions();

    // One message at a time through both stages.
    auto a0 = MakeCore(file, 0, 2), a1 = MakeCore(file, 1, 2);
    Outcomes serial;
    int unused = 0;
    for (const auto& m : msgs) {
      StageOutput o0 = a0->Handle(m);
      ASSERT_TRUE(o0.errors.empty()) << o0.errors[0]->DebugString();
      for (auto& f : o0.forward) {
        StageOutput o1 = a1->Handle(*f);
        ASSERT_TRUE(o1.errors.empty()) << o1.errors[0]->DebugString();
        Collect(o1, &serial, &unused);
      }
    }

    // Batched: stage 0 steps through its whole queue, then stage 1 through what it received.
    auto b0 = MakeCore(file, 0, 2), b1 = MakeCore(file, 1, 2);
    std::deque<QueuedMessage> q0 = Queue(msgs), q1;
    while (!q0.empty()) {
      StageOutput o = b0->Step(q0);
      ASSERT_TRUE(o.errors.empty()) << o.errors[0]->DebugString();
      for (auto& f : o.forward) q1.push_back({std::move(f), Clock::now()});
    }
    Outcomes batched;
    int max_batch_runs = 0;
    while (!q1.empty()) {
      StageOutput o = b1->Step(q1);
      ASSERT_TRUE(o.errors.empty()) << o.errors[0]->DebugString();
      Collect(o, &batched, &max_batch_runs);
    }

    ASSERT_EQ(serial.size(), 8u);
    for (uint64_t s = 1; s <= 8; ++s) {
      ASSERT_EQ(batched[s].size(), serial[s].size()) << "session " << s;
      ASSERT_EQ(serial[s].size(), 6u);
      for (size_t i = 0; i < serial[s].size(); ++i) {
        EXPECT_TRUE(batched[s][i] == serial[s][i]) << "session " << s << " outcome " << i;
      }
    }
    // It really batched: every session's run of a step shared one pass.
    EXPECT_EQ(max_batch_runs, 8);
    EXPECT_EQ(b0->counters().runs_computed, a0->counters().runs_computed);
    EXPECT_LT(b0->counters().forward_passes, a0->counters().forward_passes / 4);
    EXPECT_TRUE(b0->engine().kv().CheckInvariants().ok());
    EXPECT_TRUE(b1->engine().kv().CheckInvariants().ok());
  }
}

// The ids of the computed runs the pass returned, in order (barriers as 1000 + id). Every run in
// these tests must compute: a tombstone or a session error fails the test.
std::vector<uint64_t> ResultRunIds(const StageOutput& o) {
  for (const auto& e : o.errors) ADD_FAILURE() << e->DebugString();
  std::vector<uint64_t> ids;
  for (const auto& r : o.results) {
    if (r->has_result()) ids.push_back(r->result().run_id());
    if (r->has_tombstone()) ADD_FAILURE() << r->DebugString();
    if (r->has_barrier()) ids.push_back(1000 + r->barrier().barrier_id());
  }
  return ids;
}

TEST(StageBatch, TokenCapPrefersVerifiedRunsAndTheOldestRunAlwaysGoes) {
  auto file = OpenFile(FixturePath("models/tiny-f32.gguf"));
  StageCoreConfig c;
  c.max_batch_tokens = 6;
  auto core = MakeCore(file, 0, 1, c);
  auto q = Queue({Open(1), Open(2), Open(3), Open(4), SpecRun(1, 1, 1, 0, 0, {5, 6, 7, 8}),
                  PlainRun(2, 2, {1}, 0), SpecRun(3, 3, 1, 0, 0, {9, 10, 11, 12}),
                  PlainRun(4, 4, {1}, 0)});
  size_t taken = 0;
  StageOutput o = core->Step(q, &taken);
  // The oldest run (speculative, 4 tokens) goes; the two verified runs fill the cap of 6; the
  // other speculative run waits.
  EXPECT_EQ(ResultRunIds(o), (std::vector<uint64_t>{1, 2, 4}));
  EXPECT_EQ(taken, 7u);
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(q.front().msg->run().run_id(), 3u);
  EXPECT_EQ(core->last_batch().rows_per_layer.front(), 6);
  o = core->Step(q, &taken);
  EXPECT_EQ(ResultRunIds(o), (std::vector<uint64_t>{3}));
  EXPECT_TRUE(q.empty());

  // A run marked VERIFIED goes ahead of a plain one only by age; a SPECULATIVE-marked plain run
  // is treated as speculative.
  auto q2 = Queue({PlainRun(10, 1, {1}, 0), SpecRun(11, 2, 2, 0, 1, {5, 6, 7, 8}),
                   PlainRun(12, 3, {2}, 0), PlainRun(13, 4, {3}, 1)});
  q2[1].msg->mutable_run()->set_priority(v1::RUN_PRIORITY_VERIFIED);
  q2[2].msg->mutable_run()->set_priority(v1::RUN_PRIORITY_SPECULATIVE);
  o = core->Step(q2, &taken);
  EXPECT_EQ(ResultRunIds(o), (std::vector<uint64_t>{10, 11, 13}));
  ASSERT_EQ(q2.size(), 1u);
  EXPECT_EQ(q2.front().msg->run().run_id(), 12u);
}

TEST(StageBatch, RunsSentTogetherSpreadOverTheStages) {
  auto file = OpenFile(FixturePath("models/tiny-f32.gguf"));
  auto core = MakeCore(file, 0, 2);  // stage 0 of 2: it forwards hidden states
  auto run_ids = [](const StageOutput& o) {
    std::vector<uint64_t> ids;
    for (const auto& f : o.forward) {
      if (f->has_run()) ids.push_back(f->run().run_id());
    }
    return ids;
  };
  // 4 runs in flight over 2 stages: at most 2 per pass, oldest first.
  std::vector<v1::StageDownstream> msgs = {Open(1), Open(2), Open(3), Open(4)};
  for (uint64_t s = 1; s <= 4; ++s) {
    v1::StageDownstream r = PlainRun(s, s, {1, static_cast<int32_t>(10 + s)}, 0);
    r.mutable_run()->set_pipeline_runs(4);
    msgs.push_back(r);
  }
  auto q = Queue(msgs);
  StageOutput o = core->Step(q);
  EXPECT_EQ(run_ids(o), (std::vector<uint64_t>{1, 2}));
  o = core->Step(q);
  EXPECT_EQ(run_ids(o), (std::vector<uint64_t>{3, 4}));
  EXPECT_TRUE(q.empty());
  // Without the hint everything queued shares the pass.
  std::vector<v1::StageDownstream> more;
  for (uint64_t s = 1; s <= 4; ++s) {
    more.push_back(PlainRun(10 + s, s, {static_cast<int32_t>(20 + s)}, 2));
  }
  auto q2 = Queue(more);
  o = core->Step(q2);
  EXPECT_EQ(run_ids(o), (std::vector<uint64_t>{11, 12, 13, 14}));
  EXPECT_TRUE(o.errors.empty());
}

TEST(StageBatch, OneRunPerSessionPerPassAndBarriersKeepTheirPlace) {
  auto file = OpenFile(FixturePath("models/tiny-f32.gguf"));
  auto core = MakeCore(file, 0, 1);
  auto q = Queue({Open(1), Open(2), PlainRun(1, 1, {1, 5}, 0), PlainRun(2, 1, {6}, 2),
                  PlainRun(3, 2, {1, 7}, 0), Barrier(9), PlainRun(4, 2, {8}, 2)});
  size_t taken = 0;
  StageOutput o = core->Step(q, &taken);
  EXPECT_EQ(ResultRunIds(o), (std::vector<uint64_t>{1, 3}));
  EXPECT_EQ(taken, 4u);
  ASSERT_EQ(q.size(), 3u);  // run 2 (behind run 1 of its session), the barrier, run 4
  // Run 2 goes, then the barrier (everything before it is taken), then run 4 behind it.
  o = core->Step(q, &taken);
  EXPECT_EQ(ResultRunIds(o), (std::vector<uint64_t>{2, 1009, 4}));
  EXPECT_TRUE(q.empty());

  // A SessionOpen keeps its place like a barrier: it waits behind session 1's second run, and
  // session 3's run behind it waits too.
  auto q2 = Queue({PlainRun(5, 1, {9}, 3), PlainRun(6, 1, {10}, 4), Open(3),
                   PlainRun(7, 3, {1, 11}, 0), PlainRun(8, 2, {12}, 3)});
  o = core->Step(q2, &taken);
  EXPECT_EQ(ResultRunIds(o), (std::vector<uint64_t>{5}));
  ASSERT_EQ(q2.size(), 4u);
  o = core->Step(q2, &taken);
  EXPECT_EQ(ResultRunIds(o), (std::vector<uint64_t>{6, 7, 8}));
  EXPECT_TRUE(q2.empty());
}

TEST(StageBatch, ARunCancelledMidPassLeavesTheBatchAndTheOthersComplete) {
  engine::SynthSpec spec;
  spec.n_layer = 24;
  spec.n_embd = 512;
  spec.n_ff = 1536;
  spec.n_head = 8;
  spec.n_head_kv = 8;
  spec.n_vocab = 512;
  spec.type = gguf::TensorType::kF32;
  const std::string path = ::testing::TempDir() + "/stage_batch_cancel.gguf";
  ASSERT_TRUE(engine::WriteSyntheticModel(spec, path).ok());
  auto file = OpenFile(path);
  std::remove(path.c_str());
  auto prompt = [](int32_t base) {
    std::vector<int32_t> p = {1};
    for (int32_t i = 0; i < 15; ++i) p.push_back(base + i);
    return p;
  };
  auto batch = [&] {
    return Queue({Open(1), Open(2), Open(3), PlainRun(1, 1, prompt(300), 0),
                  PlainRun(2, 2, prompt(320), 0), PlainRun(3, 3, prompt(340), 0)});
  };
  // How long one pass of the three runs takes here.
  auto ref = MakeCore(file, 0, 1);
  auto rq = batch();
  const auto t0 = Clock::now();
  StageOutput want = ref->Step(rq);
  const auto pass = Clock::now() - t0;
  ASSERT_EQ(want.results.size(), 3u);

  // Cancel run 2 halfway through the pass (retried if the machine stalls the canceller so long
  // that the pass ends first).
  bool shrank = false;
  for (int attempt = 0; attempt < 5 && !shrank; ++attempt) {
    auto core = MakeCore(file, 0, 1);
    auto q = batch();
    StageOutput got;
    std::thread worker([&] { got = core->Step(q); });
    std::this_thread::sleep_for(pass / 2);
    core->Cancel({2});
    worker.join();
    const std::vector<int32_t>& rows = core->last_batch().rows_per_layer;
    ASSERT_EQ(rows.front(), 48);
    if (rows.back() != 32) continue;  // the cancel came too late
    shrank = true;
    ASSERT_EQ(got.results.size(), 3u);
    EXPECT_TRUE(got.results[1]->has_tombstone());
    EXPECT_EQ(got.results[1]->tombstone().reason(), v1::TOMBSTONE_REASON_CANCELLED);
    EXPECT_EQ(core->counters().runs_stopped, 1u);
    EXPECT_EQ(core->counters().runs_computed, 2u);
    for (size_t i : {0u, 2u}) {
      ASSERT_TRUE(got.results[i]->has_result());
      EXPECT_EQ(got.results[i]->result().rows(0).argmax().logit(),
                want.results[i]->result().rows(0).argmax().logit());
      EXPECT_EQ(got.results[i]->result().rows(0).argmax().token_id(),
                want.results[i]->result().rows(0).argmax().token_id());
    }
    // The stopped run's positions are poisoned: its next run is skipped as a dependency.
    auto q2 = Queue({PlainRun(4, 2, {7}, 16), PlainRun(5, 1, {7}, 16)});
    StageOutput next = core->Step(q2);
    ASSERT_EQ(next.results.size(), 2u);
    EXPECT_EQ(next.results[0]->tombstone().reason(), v1::TOMBSTONE_REASON_DEPENDENCY);
    EXPECT_TRUE(next.results[1]->has_result());
  }
  EXPECT_TRUE(shrank);
}

TEST(StageBatch, EmulatedPaddingIsChargedPerPass) {
  auto file = OpenFile(FixturePath("models/tiny-f32.gguf"));
  StageCoreConfig c;
  c.emulate_run_us = 20000;
  c.emulate_token_us = 1000;
  auto core = MakeCore(file, 0, 1, c);
  auto q = Queue({Open(1), Open(2), Open(3), PlainRun(1, 1, {1, 5}, 0), PlainRun(2, 2, {1, 6}, 0),
                  PlainRun(3, 3, {1, 7}, 0)});
  const auto t0 = Clock::now();
  StageOutput o = core->Step(q);
  const auto took = Clock::now() - t0;
  ASSERT_EQ(o.results.size(), 3u);
  // One pass of 6 tokens: 20 ms + 6 x 1 ms, not three passes of 22 ms (66 ms). The compute
  // beside the padding runs slower under ThreadSanitizer: its slack scales (the traces below show
  // the single pass in any build).
  EXPECT_GE(took, std::chrono::microseconds(26000));
  EXPECT_LT(took, std::chrono::microseconds(26000) +
                      pipeinfer::testing::TimeScale() * std::chrono::microseconds(34000));
  for (const auto& r : o.results) {
    const v1::StageTiming& t = r->result().trace(0);
    EXPECT_EQ(t.batch_runs(), 3u);
    EXPECT_EQ(t.batch_tokens(), 6u);
    EXPECT_GE(t.compute_us(), 26000u);
  }
  EXPECT_EQ(core->counters().forward_passes, 1u);
}

}  // namespace
}  // namespace pipeinfer::stage
