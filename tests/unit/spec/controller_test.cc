// The speculation controller against a scripted in-memory pipeline (fake_pipeline.h):
//  * greedy: for every mode, ablation and draft quality, and for thousands of random
//    interleavings of stage steps, outcome deliveries and speculation attempts, the committed
//    sequence equals the target's own greedy continuation; KV partitions never leak;
//  * sampling: the joint distribution of the first generated tokens under sync and pipeinfer
//    equals the target's (chi-square over many seeded requests), for a draft that is close to the
//    target and for one that is far from it.
#include "spec/controller.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "unit/sampling/chi_square.h"
#include "unit/spec/fake_pipeline.h"

namespace pipeinfer::spec {
namespace {

using testing::Drive;
using testing::FakeDrafter;
using testing::FakePipeline;

constexpr int kVocab = 16;

uint64_t Mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

uint64_t HashPath(const std::vector<int32_t>& path, uint64_t salt) {
  uint64_t h = salt;
  const size_t n = path.size();
  for (size_t i = n >= 3 ? n - 3 : 0; i < n; ++i) h = Mix(h ^ (static_cast<uint64_t>(path[i]) + 1));
  return Mix(h ^ n);
}

// The greedy target's next token after `path`.
int32_t TargetNext(const std::vector<int32_t>& path) {
  return static_cast<int32_t>(HashPath(path, 17) % kVocab);
}

TargetRow ArgmaxRow(const std::vector<int32_t>& path) {
  TargetRow r;
  r.kind = TargetRow::Kind::kArgmax;
  r.argmax = TargetNext(path);
  return r;
}

// A draft that agrees with the target with probability `agree` (per path), with a confidence that
// varies per path (so p_accept cuts chains at different lengths).
FakeDrafter::Fn GreedyDraft(double agree) {
  return [agree](const std::vector<int32_t>& seq) {
    const uint64_t h = HashPath(seq, 99);
    const int32_t target = TargetNext(seq);
    int32_t tok = target;
    if (static_cast<double>(h % 1000) >= agree * 1000.0) tok = (tok + 1 + (h >> 20) % 3) % kVocab;
    std::vector<float> logits(kVocab, 0.0f);
    logits[tok] = 1.0f + static_cast<float>((h >> 10) % 6);  // top-1 probability 0.15 .. 0.91
    // A wrong draft often has the target's token as its runner-up (what token trees exploit).
    if (tok != target && (h >> 30) % 2 == 0) logits[target] = 0.6f * logits[tok];
    return logits;
  };
}

std::vector<int32_t> Reference(std::vector<int32_t> seq, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) seq.push_back(TargetNext(seq));
  return seq;
}

struct Case {
  std::string name;
  SpecParams spec;
  double agree = 0.8;
  uint32_t n_stages = 3;
  uint32_t max_run_tokens = 512;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> Cases() {
  std::vector<Case> out;
  for (Mode mode : {Mode::kPlain, Mode::kSync, Mode::kPipeInfer}) {
    for (double agree : {1.0, 0.8, 0.3, 0.0}) {
      Case c;
      c.spec.mode = mode;
      c.spec.p_accept = 0.2f;
      c.agree = agree;
      c.name =
          std::string(ModeName(mode)) + "_agree" + std::to_string(static_cast<int>(agree * 100));
      out.push_back(c);
    }
  }
  Case nc;
  nc.spec.no_cancel = true;
  nc.name = "pipeinfer_no_cancel";
  out.push_back(nc);
  Case ncont;
  ncont.spec.no_continuous = true;
  ncont.name = "pipeinfer_no_continuous";
  out.push_back(ncont);
  Case both = nc;
  both.spec.no_continuous = true;
  both.agree = 0.5;
  both.name = "pipeinfer_no_cancel_no_continuous";
  out.push_back(both);
  Case deep;
  deep.spec.draft_max = 8;
  deep.spec.p_accept = 0.0f;
  deep.spec.max_inflight = 8;
  deep.n_stages = 8;
  deep.name = "pipeinfer_deep";
  out.push_back(deep);
  Case adaptive;
  adaptive.spec.p_accept = 0.05f;
  adaptive.spec.p_recovery = 0.3f;
  adaptive.spec.p_decay = 0.05f;
  adaptive.name = "pipeinfer_recovery_decay";
  out.push_back(adaptive);
  Case one_stage;
  one_stage.n_stages = 1;
  one_stage.name = "pipeinfer_one_stage";
  out.push_back(one_stage);
  for (Mode mode : {Mode::kSync, Mode::kPipeInfer}) {
    for (uint32_t branches : {2u, 4u}) {
      Case t;
      t.spec.mode = mode;
      t.spec.max_branches = branches;
      t.spec.p_split = 0.03f;
      t.spec.p_accept = 0.1f;
      t.spec.draft_max = 6;
      t.agree = 0.5;
      t.name = std::string(ModeName(mode)) + "_tree" + std::to_string(branches);
      out.push_back(t);
    }
  }
  Case tree_nc;
  tree_nc.spec.max_branches = 3;
  tree_nc.spec.p_split = 0.03f;
  tree_nc.spec.no_cancel = true;
  tree_nc.agree = 0.4;
  tree_nc.name = "pipeinfer_tree3_no_cancel";
  out.push_back(tree_nc);
  Case small_runs;
  small_runs.max_run_tokens = 3;  // prefill in chunks, micro-batches capped
  small_runs.spec.draft_max = 6;
  small_runs.name = "pipeinfer_chunked";
  out.push_back(small_runs);
  // Every speculative case also with the paper's micro-batches (the others run the dynamic tree).
  const size_t n = out.size();
  for (size_t i = 0; i < n; ++i) {
    if (out[i].spec.mode == Mode::kPlain) continue;
    Case paper = out[i];
    paper.spec.paper_tree = true;
    paper.name += "_paper";
    out.push_back(paper);
  }
  return out;
}

class GreedyIdentity : public ::testing::TestWithParam<Case> {};

TEST_P(GreedyIdentity, CommittedEqualsTargetGreedyInEveryInterleaving) {
  const Case& cs = GetParam();
  uint64_t cancels = 0, skipped = 0, accepted = 0, sibling_accepts = 0, branch_accepts = 0;
  for (uint64_t trial = 0; trial < 300; ++trial) {
    std::vector<int32_t> prompt;
    for (uint64_t i = 0; i < 1 + trial % 7; ++i) {
      prompt.push_back(static_cast<int32_t>(Mix(trial * 31 + i) % kVocab));
    }
    const uint32_t max_new = 1 + static_cast<uint32_t>(trial % 40);
    ControllerOptions opt;
    opt.spec = cs.spec;
    opt.n_stages = cs.n_stages;
    opt.max_run_tokens = cs.max_run_tokens;
    opt.stop.max_new_tokens = max_new;
    opt.stop.max_context = 4096;
    FakePipeline pipe(ArgmaxRow, trial, trial % 2 == 0 ? 0.9 : 0.3);
    FakeDrafter drafter(GreedyDraft(cs.agree));
    Controller c(opt, &pipe, &drafter);
    ASSERT_TRUE(c.Start(prompt).ok());
    absl::Status st = Drive(c, pipe, trial * 7919 + 1);
    ASSERT_TRUE(st.ok()) << cs.name << " trial " << trial << ": " << st;
    ASSERT_EQ(c.finish_reason(), Finish::kLength);
    EXPECT_EQ(c.committed(), Reference(prompt, max_new)) << cs.name << " trial " << trial;
    EXPECT_EQ(c.TakeEmitted().size(), max_new);
    // Drain the pipeline: every partition alive on the stages belongs to a run still in flight
    // (SessionClose frees those), and the controller agrees on the count.
    while (pipe.HasPending()) pipe.Step();
    EXPECT_EQ(pipe.live_partitions(), c.live_partitions()) << cs.name << " trial " << trial;
    EXPECT_LE(c.live_partitions(), c.max_inflight());
    cancels += pipe.cancels();
    skipped += pipe.skipped();
    accepted += c.counters().tokens_accepted;
    sibling_accepts += c.counters().sibling_accepts;
    branch_accepts += c.counters().branch_accepts;
    if (cs.spec.mode == Mode::kPlain) {
      EXPECT_EQ(c.counters().runs_speculative, 0u);
    }
    if (cs.spec.no_cancel) {
      EXPECT_EQ(pipe.cancels(), 0u);
    }
  }
  const bool speculates = cs.spec.mode != Mode::kPlain;
  if (cs.spec.max_branches > 1 || (speculates && !cs.spec.paper_tree && cs.agree < 1.0)) {
    EXPECT_GT(sibling_accepts, 0u) << cs.name << ": no sibling branch was ever accepted";
  }
  if (speculates && cs.agree > 0.0) {
    EXPECT_GT(accepted, 0u) << cs.name;
  }
  if (cs.spec.mode == Mode::kPipeInfer && !cs.spec.paper_tree && cs.agree > 0.0 && cs.agree < 1.0) {
    // Real branches: a sibling's own subtree was drafted, sent and accepted.
    EXPECT_GT(branch_accepts, 0u) << cs.name << ": no token below a sibling was ever accepted";
  }
  if (cs.spec.mode == Mode::kPipeInfer && !cs.spec.no_cancel && cs.agree < 1.0) {
    EXPECT_GT(cancels, 0u) << cs.name;
    EXPECT_GT(skipped, 0u) << cs.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, GreedyIdentity, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return info.param.name; });

TEST(Controller, StopsAtEosInsideAnAcceptedRun) {
  // The target's continuation contains token `eos` at some position; generation must stop right
  // there even when the verified run continues past it.
  std::vector<int32_t> prompt{3, 1, 4};
  const std::vector<int32_t> ref = Reference(prompt, 60);
  int32_t eos = ref[prompt.size() + 7];
  size_t first = prompt.size();
  while (ref[first] != eos) ++first;
  for (Mode mode : {Mode::kPlain, Mode::kSync, Mode::kPipeInfer}) {
    ControllerOptions opt;
    opt.spec.mode = mode;
    opt.spec.p_accept = 0.0f;
    opt.spec.draft_max = 8;
    opt.stop.eos_ids = {eos};
    opt.stop.max_new_tokens = 60;
    opt.stop.max_context = 4096;
    FakePipeline pipe(ArgmaxRow, 5, 0.5);
    FakeDrafter drafter(GreedyDraft(1.0));
    Controller c(opt, &pipe, &drafter);
    ASSERT_TRUE(c.Start(prompt).ok());
    ASSERT_TRUE(Drive(c, pipe, 11).ok());
    EXPECT_EQ(c.finish_reason(), Finish::kStop) << ModeName(mode);
    EXPECT_EQ(c.committed(), std::vector<int32_t>(ref.begin(), ref.begin() + first + 1))
        << ModeName(mode);
  }
}

TEST(Controller, PerfectDraftNeedsFewerVerificationsThanTokens) {
  std::vector<int32_t> prompt{7, 7};
  for (Mode mode : {Mode::kSync, Mode::kPipeInfer}) {
    ControllerOptions opt;
    opt.spec.mode = mode;
    opt.spec.p_accept = 0.0f;
    opt.spec.draft_max = 4;
    opt.stop.max_new_tokens = 40;
    opt.stop.max_context = 4096;
    FakePipeline pipe(ArgmaxRow, 1, 0.5);
    FakeDrafter drafter(GreedyDraft(1.0));
    Controller c(opt, &pipe, &drafter);
    ASSERT_TRUE(c.Start(prompt).ok());
    ASSERT_TRUE(Drive(c, pipe, 3).ok());
    EXPECT_EQ(c.committed(), Reference(prompt, 40));
    EXPECT_EQ(c.counters().runs_cancelled, 0u) << ModeName(mode);
    // Each verification of a perfect 4-token chain commits several tokens.
    EXPECT_LT(c.counters().verifications, 20u) << ModeName(mode);
    EXPECT_GT(c.counters().tokens_accepted, 20u) << ModeName(mode);
  }
}

TEST(Controller, NoContinuousLaunchesOneRunPerVerification) {
  // Both algorithms: with no_continuous, one speculative run per verification, none meanwhile.
  for (bool paper : {false, true}) {
    ControllerOptions opt;
    opt.spec.mode = Mode::kPipeInfer;
    opt.spec.no_continuous = true;
    opt.spec.paper_tree = paper;
    opt.spec.draft_max = 2;
    opt.spec.p_accept = 0.0f;
    opt.n_stages = 8;
    opt.stop.max_new_tokens = 40;
    opt.stop.max_context = 4096;
    FakePipeline pipe(ArgmaxRow, 1, 0.5);
    FakeDrafter drafter(GreedyDraft(1.0));
    Controller c(opt, &pipe, &drafter);
    ASSERT_TRUE(c.Start(std::vector<int32_t>{3, 4}).ok());
    absl::StatusOr<int> first = c.Speculate(nullptr);
    ASSERT_TRUE(first.ok());
    EXPECT_EQ(*first, 1) << (paper ? "paper" : "tree");
    absl::StatusOr<int> again = c.Speculate(nullptr);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, 0) << (paper ? "paper" : "tree");
    // After a verification, one more.
    while (!pipe.HasOutcome()) pipe.Step();
    ASSERT_TRUE(c.OnOutcome(pipe.PopOutcome()).ok());
    absl::StatusOr<int> next = c.Speculate(nullptr);
    ASSERT_TRUE(next.ok());
    EXPECT_EQ(*next, 1) << (paper ? "paper" : "tree");
  }
}

TEST(Controller, NoDrafterMeansPlain) {
  ControllerOptions opt;
  opt.spec.mode = Mode::kPipeInfer;
  opt.stop.max_new_tokens = 5;
  opt.stop.max_context = 64;
  FakePipeline pipe(ArgmaxRow, 1, 0.5);
  Controller c(opt, &pipe, nullptr);
  EXPECT_EQ(c.mode(), Mode::kPlain);
  ASSERT_TRUE(c.Start(std::vector<int32_t>{1, 2}).ok());
  ASSERT_TRUE(Drive(c, pipe, 1).ok());
  EXPECT_EQ(c.committed(), Reference({1, 2}, 5));
  EXPECT_EQ(pipe.runs_sent(),
            5u);  // the prefill run, then one run per generated token but the last
}

TEST(Controller, ContextLimitEndsWithLength) {
  ControllerOptions opt;
  opt.spec.mode = Mode::kPipeInfer;
  opt.spec.p_accept = 0.0f;
  opt.stop.max_context = 10;  // 4 prompt tokens + 6 generated
  FakePipeline pipe(ArgmaxRow, 2, 0.5);
  FakeDrafter drafter(GreedyDraft(0.7));
  Controller c(opt, &pipe, &drafter);
  ASSERT_TRUE(c.Start(std::vector<int32_t>{1, 2, 3, 4}).ok());
  ASSERT_TRUE(Drive(c, pipe, 5).ok());
  EXPECT_EQ(c.finish_reason(), Finish::kLength);
  EXPECT_EQ(c.committed(), Reference({1, 2, 3, 4}, 6));
}

TEST(Controller, RejectsUnexpectedOutcome) {
  ControllerOptions opt;
  opt.stop.max_context = 64;
  FakePipeline pipe(ArgmaxRow, 2, 0.5);
  Controller c(opt, &pipe, nullptr);
  ASSERT_TRUE(c.Start(std::vector<int32_t>{1, 2}).ok());
  Outcome o;
  o.run_id = 999;
  EXPECT_EQ(c.OnOutcome(o).code(), absl::StatusCode::kInternal);
}

TEST(Params, Validate) {
  SpecParams p;
  EXPECT_TRUE(Validate(p).ok());
  p.draft_max = 0;  // self-tuned
  EXPECT_TRUE(Validate(p).ok());
  p.draft_max = 65;
  EXPECT_FALSE(Validate(p).ok());
  p = SpecParams{};
  p.p_accept = 1.5f;
  EXPECT_FALSE(Validate(p).ok());
  p = SpecParams{};
  p.max_branches = 17;
  EXPECT_FALSE(Validate(p).ok());
  EXPECT_EQ(*ParseMode("sync"), Mode::kSync);
  EXPECT_FALSE(ParseMode("fast").ok());
}

// ---- Sampling: the output distribution is the target's ----------------------------------------

constexpr int kSmallVocab = 3;
constexpr int kSampled = 3;  // generated tokens per request whose joint distribution is tested

// Target and draft distributions depend on the last token only (a Markov chain), so the exact
// joint distribution of the first tokens is easy to compute.
std::vector<double> TargetProbs(int32_t last) {
  static const double kP[kSmallVocab][kSmallVocab] = {
      {0.6, 0.3, 0.1}, {0.2, 0.2, 0.6}, {0.45, 0.1, 0.45}};
  return {kP[last][0], kP[last][1], kP[last][2]};
}

std::vector<double> DraftProbs(int32_t last, bool close) {
  static const double kClose[kSmallVocab][kSmallVocab] = {
      {0.5, 0.35, 0.15}, {0.25, 0.15, 0.6}, {0.4, 0.2, 0.4}};
  static const double kFar[kSmallVocab][kSmallVocab] = {
      {0.05, 0.15, 0.8}, {0.7, 0.25, 0.05}, {0.1, 0.8, 0.1}};
  const auto& m = close ? kClose : kFar;
  return {m[last][0], m[last][1], m[last][2]};
}

std::vector<float> Logits(const std::vector<double>& p) {
  std::vector<float> l;
  for (double x : p) l.push_back(static_cast<float>(std::log(x)));
  return l;
}

void CheckSampledDistribution(Mode mode, bool close_draft, bool full_rows,
                              uint32_t max_branches = 1, bool paper_tree = false) {
  const std::vector<int32_t> prompt{0, 2};
  std::map<int32_t, int64_t> counts;
  constexpr int64_t kRequests = 12000;
  for (int64_t i = 0; i < kRequests; ++i) {
    ControllerOptions opt;
    opt.spec.mode = mode;
    opt.spec.p_accept = 0.0f;
    opt.spec.draft_max = 3;
    opt.spec.max_branches = max_branches;
    opt.spec.p_split = 0.2f;
    opt.spec.paper_tree = paper_tree;
    opt.sampling.temperature = 1.0f;
    opt.sampling.top_k = 0;
    opt.sampling.seed = static_cast<uint64_t>(i) * 2654435761u + 7;
    opt.stop.max_new_tokens = kSampled;
    opt.stop.max_context = 64;
    FakePipeline pipe(
        [full_rows](const std::vector<int32_t>& path) {
          TargetRow r;
          const std::vector<double> p = TargetProbs(path.back());
          if (full_rows) {
            r.kind = TargetRow::Kind::kFull;
            r.logits = Logits(p);
          } else {
            r.kind = TargetRow::Kind::kSparse;
            for (int t = 0; t < kSmallVocab; ++t) {
              r.sparse.ids.push_back(t);
              r.sparse.probs.push_back(static_cast<float>(p[t]));
            }
          }
          return r;
        },
        static_cast<uint64_t>(i), 0.5);
    FakeDrafter drafter([close_draft](const std::vector<int32_t>& seq) {
      return Logits(DraftProbs(seq.back(), close_draft));
    });
    Controller c(opt, &pipe, &drafter);
    ASSERT_TRUE(c.Start(prompt).ok());
    absl::Status st = Drive(c, pipe, static_cast<uint64_t>(i) * 31 + 5);
    ASSERT_TRUE(st.ok()) << st;
    const std::vector<int32_t> out = c.TakeEmitted();
    ASSERT_EQ(out.size(), static_cast<size_t>(kSampled));
    int32_t key = 0;
    for (int32_t t : out) key = key * kSmallVocab + t;
    ++counts[key];
  }
  sampling::SparseDist expected;
  for (int32_t key = 0; key < kSmallVocab * kSmallVocab * kSmallVocab; ++key) {
    int32_t last = prompt.back();
    double p = 1.0;
    int32_t k = key;
    const int32_t toks[3] = {k / 9, (k / 3) % 3, k % 3};
    for (int32_t t : toks) {
      p *= TargetProbs(last)[t];
      last = t;
    }
    expected.ids.push_back(key);
    expected.probs.push_back(static_cast<float>(p));
  }
  const sampling::testing::ChiSquareResult chi =
      sampling::testing::ChiSquare(counts, expected, kRequests);
  EXPECT_TRUE(chi.ok) << ModeName(mode) << (close_draft ? " close" : " far") << " draft\n"
                      << chi.detail;
}

TEST(Sampling, SyncCloseDraftFullRows) { CheckSampledDistribution(Mode::kSync, true, true); }
TEST(Sampling, SyncFarDraftSparseRows) { CheckSampledDistribution(Mode::kSync, false, false); }
TEST(Sampling, PipeInferCloseDraftSparseRows) {
  CheckSampledDistribution(Mode::kPipeInfer, true, false);
}
TEST(Sampling, PipeInferFarDraftFullRows) {
  CheckSampledDistribution(Mode::kPipeInfer, false, true);
}
TEST(Sampling, SyncTreeFarDraft) { CheckSampledDistribution(Mode::kSync, false, false, 3); }
TEST(Sampling, PipeInferTreeCloseDraft) {
  CheckSampledDistribution(Mode::kPipeInfer, true, true, 2);
}
TEST(Sampling, PipeInferTreeFarDraft) {
  CheckSampledDistribution(Mode::kPipeInfer, false, false, 3);
}

TEST(Sampling, PaperSyncTreeFarDraft) {
  CheckSampledDistribution(Mode::kSync, false, false, 3, /*paper_tree=*/true);
}
TEST(Sampling, PaperPipeInferTreeCloseDraft) {
  CheckSampledDistribution(Mode::kPipeInfer, true, true, 2, /*paper_tree=*/true);
}

}  // namespace
}  // namespace pipeinfer::spec
