// Token trees grown over several runs (stage.proto Run.anchors) on two chained stage cores: later
// runs hang their roots off slots that earlier runs wrote, every node attends to exactly its path
// (each result row is checked against llama.cpp's greedy ids), a commit adopts the path of any
// node, and poison is kept per slot: a cancelled run's slots are poisoned on every stage with the
// same shape (the tombstone carries it), a run below poisoned slots only is skipped as
// DEPENDENCY, a run with a healthy root is still computed right, and a commit through poison fails.
#include <gtest/gtest.h>

#include "pipeinfer/v1/stage.pb.h"
#include "stage/stage_core.h"
#include "stage_chain.h"
#include "testing/fixtures.h"
#include "testing/stage_messages.h"

namespace pipeinfer::stage {
namespace {

using pipeinfer::testing::FixturePath;
using pipeinfer::testing::ReadIds;

struct Tok {
  int32_t id;
  uint32_t pos;
  int32_t parent;  // run-local index or -1
  int32_t anchor;  // for a root: the slot it hangs off (-1: the partition's last slot)
  uint32_t slot;   // the slot it will get (its branch label)
};

// A speculative tree run into `part` (with a fork from canonical when n_fork > 0).
v1::StageDownstream TreeRun(uint64_t rid, uint32_t part, uint32_t n_fork,
                            const std::vector<Tok>& toks) {
  v1::StageDownstream m;
  auto* r = m.mutable_run();
  r->set_run_id(rid);
  r->set_session_id(1);
  r->set_kind(v1::RUN_KIND_SPECULATIVE);
  r->set_partition(part);
  if (n_fork > 0) {
    r->mutable_fork()->set_partition(part);
    r->mutable_fork()->set_n_positions(n_fork);
  }
  for (size_t i = 0; i < toks.size(); ++i) {
    r->add_token_ids(static_cast<uint32_t>(toks[i].id));
    r->add_positions(toks[i].pos);
    r->add_parents(toks[i].parent);
    r->add_anchors(toks[i].parent < 0 ? toks[i].anchor : -1);
    r->add_branches(toks[i].slot);
    r->add_result_rows(static_cast<uint32_t>(i));
  }
  return m;
}

v1::StageDownstream CommitBranch(uint32_t part, uint32_t branch, uint32_t n, bool release) {
  v1::StageDownstream m = Commit(1, part, n, release);
  m.mutable_kv()->mutable_commit()->set_branch(branch);
  return m;
}

uint32_t Argmax(const v1::ResultsDownstream& r, int row) {
  return r.result().rows(row).argmax().token_id();
}

class StageTreeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
    g = ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
    L = static_cast<uint32_t>(prompt.size());
    chain.Send(Open(1));
    auto r = chain.Send(PlainRun(1, 1, prompt, 0));
    ASSERT_EQ(Argmax(r[0], 0), static_cast<uint32_t>(g[0]));
    auto p = chain.Send(PlainRun(2, 1, {g[0]}, L));  // canonical: prompt g0 (L + 1 slots)
    ASSERT_EQ(Argmax(p[0], 0), static_cast<uint32_t>(g[1]));
  }
  Pipeline chain{"tiny-f32", 2};
  std::vector<int32_t> prompt, g;
  uint32_t L = 0;
};

TEST_F(StageTreeTest, BranchesGrowOverRunsAndAnyNodeCommits) {
  // Run 3 forks the tree (prefix L + 1) with two roots: g1 (slot L+1) and a wrong sibling 7
  // (slot L+2). Run 4 hangs g2 off g1's slot and 9 off the sibling's slot. Run 5 hangs g3 off
  // g2's slot. Each row is what the target predicts after that node's own path.
  const uint32_t s = L + 1;
  auto r3 = chain.Send(TreeRun(3, 1, L + 1, {{g[1], L + 1, -1, -1, s}, {7, L + 1, -1, -1, s + 1}}));
  ASSERT_EQ(r3.size(), 1u);
  ASSERT_TRUE(r3[0].has_result());
  EXPECT_EQ(Argmax(r3[0], 0), static_cast<uint32_t>(g[2]));
  auto r4 = chain.Send(TreeRun(
      4, 1, 0, {{9, L + 2, -1, int32_t(s + 1), s + 2}, {g[2], L + 2, -1, int32_t(s), s + 3}}));
  ASSERT_TRUE(r4[0].has_result());
  EXPECT_EQ(Argmax(r4[0], 1), static_cast<uint32_t>(g[3]));
  auto r5 = chain.Send(TreeRun(5, 1, 0, {{g[3], L + 3, -1, int32_t(s + 3), s + 4}}));
  ASSERT_TRUE(r5[0].has_result());
  EXPECT_EQ(Argmax(r5[0], 0), static_cast<uint32_t>(g[4]));
  EXPECT_TRUE(chain.errors().empty());
  // Canonical adopts the path to g3 (an interior-to-leaf path spread over three runs).
  EXPECT_TRUE(chain.Send(CommitBranch(1, s + 4, L + 4, true)).empty());
  auto c = chain.Send(PlainRun(6, 1, {g[4]}, L + 4));
  EXPECT_EQ(Argmax(c[0], 0), static_cast<uint32_t>(g[5]));
  EXPECT_TRUE(chain.errors().empty());
  for (size_t i = 0; i < chain.size(); ++i) {
    EXPECT_TRUE(chain.stage(i).engine().kv().CheckInvariants().ok());
  }
}

TEST_F(StageTreeTest, PoisonIsPerSlotAndTravelsWithTheTombstone) {
  const uint32_t s = L + 1;
  auto r3 = chain.Send(TreeRun(3, 1, L + 1, {{g[1], L + 1, -1, -1, s}}));
  ASSERT_TRUE(r3[0].has_result());
  // Run 4 (child 5 of g1, slot s+1) is cancelled everywhere before it is computed: a tombstone
  // that carries its shape; downstream stages append its slot poisoned too.
  for (size_t i = 0; i < chain.size(); ++i) chain.stage(i).Cancel({4});
  auto r4 = chain.Send(TreeRun(4, 1, 0, {{5, L + 2, -1, int32_t(s), s + 1}}));
  ASSERT_TRUE(r4[0].has_tombstone());
  EXPECT_EQ(r4[0].tombstone().reason(), v1::TOMBSTONE_REASON_CANCELLED);
  ASSERT_EQ(r4[0].tombstone().anchors_size(), 1);
  // Below the poisoned slot only: skipped on stage 0, tombstone downstream.
  auto r5 = chain.Send(TreeRun(5, 1, 0, {{6, L + 3, -1, int32_t(s + 1), s + 2}}));
  ASSERT_TRUE(r5[0].has_tombstone());
  EXPECT_EQ(r5[0].tombstone().reason(), v1::TOMBSTONE_REASON_DEPENDENCY);
  EXPECT_EQ(chain.stage(0).counters().runs_dependency, 1u);
  // A run with one root below poison and one below g1: computed, and g1's child is right.
  auto r6 = chain.Send(TreeRun(
      6, 1, 0, {{8, L + 3, -1, int32_t(s + 1), s + 3}, {g[2], L + 2, -1, int32_t(s), s + 4}}));
  ASSERT_TRUE(r6[0].has_result());
  EXPECT_EQ(Argmax(r6[0], 1), static_cast<uint32_t>(g[3]));
  EXPECT_TRUE(chain.errors().empty());
  // Slots are numbered the same on both stages: a commit of g2's path works everywhere...
  EXPECT_TRUE(chain.Send(CommitBranch(1, s + 4, L + 3, false)).empty());
  EXPECT_TRUE(chain.errors().empty());
  auto c = chain.Send(PlainRun(7, 1, {g[3]}, L + 3));
  EXPECT_EQ(Argmax(c[0], 0), static_cast<uint32_t>(g[4]));
  // ...and one through the poisoned slot fails the session.
  chain.Send(CommitBranch(1, s + 3, L + 4, false));
  ASSERT_FALSE(chain.errors().empty());
  EXPECT_EQ(chain.errors()[0].code(), v1::STATUS_CODE_FAILED_PRECONDITION);
  EXPECT_NE(chain.errors()[0].message().find("poisoned"), std::string::npos);
}

TEST_F(StageTreeTest, BadAnchorsFailTheSessionPrecisely) {
  const uint32_t s = L + 1;
  chain.Send(TreeRun(3, 1, L + 1, {{g[1], L + 1, -1, -1, s}}));
  // An anchor beyond the partition.
  chain.Send(TreeRun(4, 1, 0, {{g[2], L + 2, -1, 999, s + 1}}));
  ASSERT_FALSE(chain.errors().empty());
  EXPECT_EQ(chain.errors()[0].code(), v1::STATUS_CODE_INVALID_ARGUMENT);
  EXPECT_NE(chain.errors()[0].message().find("slot 999"), std::string::npos);
}

TEST_F(StageTreeTest, PositionMustFollowTheAnchor) {
  const uint32_t s = L + 1;
  chain.Send(TreeRun(3, 1, L + 1, {{g[1], L + 1, -1, -1, s}}));
  chain.Send(TreeRun(4, 1, 0, {{g[2], L + 5, -1, int32_t(s), s + 1}}));
  ASSERT_FALSE(chain.errors().empty());
  EXPECT_EQ(chain.errors()[0].code(), v1::STATUS_CODE_INVALID_ARGUMENT);
  EXPECT_NE(chain.errors()[0].message().find("expected " + std::to_string(L + 2)),
            std::string::npos);
}

}  // namespace
}  // namespace pipeinfer::stage
