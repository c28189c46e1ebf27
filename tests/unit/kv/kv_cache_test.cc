// KV cache: targeted cases (copy-on-write, trees, capacity errors) and a property test that drives
// random operation sequences against a plain reference model and checks every invariant.
#include "kv/kv_cache.h"

#include <cstring>
#include <map>
#include <random>
#include <set>

#include <gtest/gtest.h>

namespace pipeinfer::kv {
namespace {

KvConfig SmallConfig(int64_t tokens, ElemType type = ElemType::kF32) {
  KvConfig c;
  c.n_layers = 2;
  c.n_embd_kv = 4;
  c.type = type;
  c.block_tokens = 4;
  c.capacity_tokens = tokens;
  return c;
}

// Writes a distinct tag into every K/V row of `slot` (all layers).
void WriteTag(KvCache& kv, const Sequence& seq, int32_t slot, float tag) {
  for (int32_t l = 0; l < kv.config().n_layers; ++l) {
    float k[4] = {tag, tag + 1000.0f * l, 0, 0};
    float v[4] = {-tag, -tag - 1000.0f * l, 0, 0};
    std::memcpy(kv.KeyRow(seq, l, slot), k, sizeof(k));
    std::memcpy(kv.ValueRow(seq, l, slot), v, sizeof(v));
  }
}

float ReadTag(const KvCache& kv, const Sequence& seq, int32_t slot, int32_t layer, bool value) {
  float r[4];
  std::memcpy(r, value ? kv.ValueRow(seq, layer, slot) : kv.KeyRow(seq, layer, slot), sizeof(r));
  return r[0];
}

TEST(KvCache, AppendForkCommitRelease) {
  KvCache kv(SmallConfig(64));
  ASSERT_TRUE(kv.OpenSession(1).ok());
  EXPECT_EQ(kv.OpenSession(1).code(), absl::StatusCode::kAlreadyExists);
  auto slots = kv.Append(1, 0, std::vector<int32_t>{-1, 0, 1, 2, 3, 4});  // 6 linear tokens
  ASSERT_TRUE(slots.ok()) << slots.status();
  const Sequence* canon = kv.Find(1, 0);
  for (int32_t i = 0; i < 6; ++i) WriteTag(kv, *canon, i, 100 + i);
  EXPECT_TRUE(canon->IsLinear());
  EXPECT_EQ(canon->position[5], 5);
  EXPECT_EQ(kv.Stats().blocks_used, 2);

  // Fork shares both blocks (the partial one too) and copies nothing yet.
  ASSERT_TRUE(kv.Fork(1, 7, 0, -1, 6).ok());
  EXPECT_EQ(kv.Stats().blocks_used, 2);
  const Sequence* part = kv.Find(1, 7);
  EXPECT_EQ(kv.RefCount(part->blocks[1]), 2);

  // A tree run: two branches off the prefix end, one of depth 2.
  //   token 0 (branch 0) -> token 1 (branch 0); token 2 (branch 1) sibling of token 0.
  auto run = kv.Append(1, 7, std::vector<int32_t>{-1, 0, -1});
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_EQ(*run, (std::vector<int32_t>{6, 7, 8}));
  part = kv.Find(1, 7);
  EXPECT_EQ(part->position[6], 6);
  EXPECT_EQ(part->position[7], 7);
  EXPECT_EQ(part->position[8], 6);
  // Writing into the shared partial block copied it: canonical keeps its own.
  EXPECT_EQ(kv.RefCount(part->blocks[1]), 1);
  EXPECT_NE(part->blocks[1], kv.Find(1, 0)->blocks[1]);
  WriteTag(kv, *part, 6, 200);
  WriteTag(kv, *part, 7, 201);
  WriteTag(kv, *part, 8, 300);
  EXPECT_EQ(ReadTag(kv, *kv.Find(1, 0), 5, 1, false), 105);
  EXPECT_EQ(ReadTag(kv, *part, 5, 1, true), -105);

  auto vis = KvCache::VisibilityOf(*part, 8);
  EXPECT_EQ(vis.linear_end, 6);
  EXPECT_EQ(vis.extra, (std::vector<int32_t>{8}));
  vis = KvCache::VisibilityOf(*part, 7);
  EXPECT_EQ(vis.linear_end, 8);
  EXPECT_TRUE(vis.extra.empty());

  // Commit branch 1 (leaf slot 8): canonical = prefix + token 2.
  ASSERT_TRUE(kv.Commit(1, 7, 8, 7).ok());
  canon = kv.Find(1, 0);
  ASSERT_EQ(canon->size(), 7);
  EXPECT_TRUE(canon->IsLinear());
  for (int32_t i = 0; i < 6; ++i) EXPECT_EQ(ReadTag(kv, *canon, i, 0, false), 100 + i);
  EXPECT_EQ(ReadTag(kv, *canon, 6, 1, false), 300);
  ASSERT_TRUE(kv.Release(1, 7).ok());
  EXPECT_EQ(kv.Release(1, 7).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(kv.Release(1, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(kv.CheckInvariants().ok());
  EXPECT_EQ(kv.Stats().blocks_used, 2);
  ASSERT_TRUE(kv.CloseSession(1).ok());
  EXPECT_EQ(kv.Stats().blocks_used, 0);
  EXPECT_TRUE(kv.CheckInvariants().ok());
}

TEST(KvCache, ExhaustionIsCleanAndReported) {
  KvCache kv(SmallConfig(12));  // 3 blocks of 4
  ASSERT_TRUE(kv.OpenSession(1).ok());
  ASSERT_TRUE(kv.Append(1, 0, std::vector<int32_t>{-1, 0, 1, 2, 3, 4}).ok());  // 2 blocks
  ASSERT_TRUE(kv.Fork(1, 1, 0, -1, 6).ok());                                   // shares both
  ASSERT_TRUE(kv.Append(1, 1, std::vector<int32_t>{-1}).ok());  // copies the partial block
  EXPECT_EQ(kv.free_blocks(), 0);
  auto full = kv.Append(1, 0, std::vector<int32_t>{-1, 0, 1});  // needs a third block
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.status().message().find("KV cache full"), std::string::npos);
  EXPECT_EQ(kv.Find(1, 0)->size(), 6);  // unchanged
  // A fork that only shares blocks still works; writing into it then needs a copy and fails.
  ASSERT_TRUE(kv.Fork(1, 2, 1, -1, 7).ok());
  EXPECT_EQ(kv.Append(1, 2, std::vector<int32_t>{-1}).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(kv.Find(1, 2)->size(), 7);
  EXPECT_TRUE(kv.CheckInvariants().ok());
  ASSERT_TRUE(kv.Release(1, 1).ok());
  ASSERT_TRUE(kv.Release(1, 2).ok());
  EXPECT_TRUE(kv.Append(1, 0, std::vector<int32_t>{-1, 0}).ok());
  EXPECT_TRUE(kv.CheckInvariants().ok());
}

TEST(KvCache, BadArguments) {
  KvCache kv(SmallConfig(32));
  EXPECT_EQ(kv.Append(9, 0, std::vector<int32_t>{-1}).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(kv.OpenSession(9).ok());
  EXPECT_EQ(kv.Append(9, 0, std::vector<int32_t>{0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kv.Append(9, 3, std::vector<int32_t>{-1}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(kv.Fork(9, 0, 0, -1, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kv.Fork(9, 1, 0, -1, 5).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(kv.Commit(9, 0, -1, 2).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(kv.CloseSession(8).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(kv.CheckInvariants().ok());
}

// Reference model: per sequence, the tag and parent of every slot.
struct RefSeq {
  std::vector<float> tags;
  std::vector<int32_t> parent;
  std::vector<int32_t> Path(int32_t slot) const {
    std::vector<int32_t> p;
    for (int32_t s = slot; s >= 0; s = parent[s]) p.push_back(s);
    return {p.rbegin(), p.rend()};
  }
};
using RefSession = std::map<uint32_t, RefSeq>;

void ExpectMatches(const KvCache& kv, const std::map<uint64_t, RefSession>& ref) {
  ASSERT_TRUE(kv.CheckInvariants().ok()) << kv.CheckInvariants();
  int64_t sequences = 0;
  for (const auto& [sid, parts] : ref) {
    for (const auto& [pid, rs] : parts) {
      ++sequences;
      const Sequence* seq = kv.Find(sid, pid);
      ASSERT_NE(seq, nullptr) << sid << "/" << pid;
      ASSERT_EQ(seq->parent, rs.parent) << sid << "/" << pid;
      for (int32_t i = 0; i < seq->size(); ++i) {
        for (int32_t l = 0; l < 2; ++l) {
          ASSERT_EQ(ReadTag(kv, *seq, i, l, false), rs.tags[i])
              << sid << "/" << pid << " slot " << i;
          ASSERT_EQ(ReadTag(kv, *seq, i, l, true), -rs.tags[i]);
        }
        // Visibility covers exactly the reference path.
        auto vis = KvCache::VisibilityOf(*seq, i);
        std::vector<int32_t> covered;
        for (int32_t s = 0; s < vis.linear_end; ++s) covered.push_back(s);
        covered.insert(covered.end(), vis.extra.begin(), vis.extra.end());
        ASSERT_EQ(covered, rs.Path(i));
        ASSERT_EQ(seq->position[i], static_cast<int32_t>(rs.Path(i).size()) - 1);
      }
    }
  }
  ASSERT_EQ(kv.Stats().sequences, sequences);
  ASSERT_EQ(kv.Stats().sessions, static_cast<int64_t>(ref.size()));
}

TEST(KvCache, RandomOperationsMatchReferenceModel) {
  for (int seed = 0; seed < 12; ++seed) {
    SCOPED_TRACE(seed);
    std::mt19937 rng(seed);
    auto pick = [&](int n) { return static_cast<int>(rng() % n); };
    KvCache kv(SmallConfig(seed % 2 ? 48 : 400));  // small capacity exercises exhaustion
    std::map<uint64_t, RefSession> ref;
    float next_tag = 1;
    int exhausted = 0;
    for (int step = 0; step < 600; ++step) {
      const int op = pick(10);
      if (ref.empty() || op == 0) {
        const uint64_t sid = 1 + pick(4);
        const int64_t reserve = pick(2) ? 0 : pick(9);  // half the sessions reserve blocks
        const bool fits = reserve <= kv.unpromised_blocks();
        absl::Status st = kv.OpenSession(sid, reserve);
        if (ref.count(sid)) {
          ASSERT_EQ(st.code(), absl::StatusCode::kAlreadyExists);
        } else if (!fits) {
          ASSERT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
        } else {
          ASSERT_TRUE(st.ok()) << st;
          ASSERT_EQ(kv.blocks_reserved(sid), reserve);
          ref[sid][0];
        }
        continue;
      }
      auto sit = std::next(ref.begin(), pick(static_cast<int>(ref.size())));
      const uint64_t sid = sit->first;
      RefSession& rsess = sit->second;
      auto pit = std::next(rsess.begin(), pick(static_cast<int>(rsess.size())));
      const uint32_t pid = pit->first;
      RefSeq& rs = pit->second;
      // A session that stays within its reservation never runs out: every operation below needs
      // at most ceil(6 / 4) + 1 = 3 new blocks (Append) or, for a path of n slots, ceil(n / 4) + 1.
      auto within_reservation = [&](int64_t need) {
        return kv.blocks_held(sid) + need <= kv.blocks_reserved(sid);
      };
      if (op == 1 && pick(3) == 0) {  // close
        ASSERT_TRUE(kv.CloseSession(sid).ok());
        ref.erase(sit);
      } else if (op <= 4) {  // append a chain or a small tree
        const int n = 1 + pick(6);
        std::vector<int32_t> parents(n);
        for (int i = 0; i < n; ++i) parents[i] = (pid == 0 || pick(3)) ? i - 1 : pick(i + 1) - 1;
        const bool safe = within_reservation(3);
        auto slots = kv.Append(sid, pid, parents);
        if (!slots.ok()) {
          ASSERT_EQ(slots.status().code(), absl::StatusCode::kResourceExhausted);
          ASSERT_FALSE(safe) << "a session within its reservation ran out";
          ++exhausted;
        } else {
          const int32_t base = static_cast<int32_t>(rs.tags.size());
          const Sequence* seq = kv.Find(sid, pid);
          for (int i = 0; i < n; ++i) {
            WriteTag(kv, *seq, (*slots)[i], next_tag);
            rs.tags.push_back(next_tag++);
            rs.parent.push_back(parents[i] < 0 ? base - 1 : base + parents[i]);
          }
        }
      } else if (op <= 6) {  // fork from this sequence
        uint32_t np = 1;
        while (rsess.count(np)) ++np;
        const int32_t size = static_cast<int32_t>(rs.tags.size());
        const int32_t leaf = size == 0 ? -1 : pick(size + 1) - 1;
        const int32_t plen = leaf < 0 ? size : static_cast<int32_t>(rs.Path(leaf).size());
        const std::vector<int32_t> path = (leaf < 0 && size > 0) ? rs.Path(size - 1)
                                          : leaf < 0             ? std::vector<int32_t>{}
                                                                 : rs.Path(leaf);
        const int32_t n = pick(static_cast<int32_t>(path.size()) + 1);
        (void)plen;
        const bool safe = within_reservation((n + 3) / 4 + 1);
        absl::Status st = kv.Fork(sid, np, pid, leaf, n);
        if (!st.ok()) {
          ASSERT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
          ASSERT_FALSE(safe) << "a session within its reservation ran out";
          ++exhausted;
        } else {
          RefSeq fresh;
          for (int32_t i = 0; i < n; ++i) {
            fresh.tags.push_back(rs.tags[path[i]]);
            fresh.parent.push_back(i - 1);
          }
          rsess[np] = fresh;
        }
      } else if (op <= 8) {  // commit a prefix of one of this sequence's paths
        const int32_t size = static_cast<int32_t>(rs.tags.size());
        if (size == 0) continue;
        const int32_t leaf = pick(size);
        const std::vector<int32_t> path = rs.Path(leaf);
        const int32_t n = pick(static_cast<int32_t>(path.size()) + 1);
        const bool safe = within_reservation((n + 3) / 4 + 1);
        absl::Status st = kv.Commit(sid, pid, leaf, n);
        if (!st.ok()) {
          ASSERT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
          ASSERT_FALSE(safe) << "a session within its reservation ran out";
          ++exhausted;
        } else {
          RefSeq fresh;
          for (int32_t i = 0; i < n; ++i) {
            fresh.tags.push_back(rs.tags[path[i]]);
            fresh.parent.push_back(i - 1);
          }
          rsess[0] = fresh;
        }
      } else if (pid != 0) {  // release
        ASSERT_TRUE(kv.Release(sid, pid).ok());
        rsess.erase(pit);
      }
      ExpectMatches(kv, ref);
      if (::testing::Test::HasFatalFailure()) return;
    }
    if (seed % 2) {
      EXPECT_GT(exhausted, 0);
    }
    for (auto& [sid, s] : ref) ASSERT_TRUE(kv.CloseSession(sid).ok());
    EXPECT_EQ(kv.Stats().blocks_used, 0);
    EXPECT_TRUE(kv.CheckInvariants().ok());
  }
}

TEST(KvCache, ReservationsArePromisedToTheirSession) {
  KvCache kv(SmallConfig(40));  // 10 blocks of 4
  ASSERT_TRUE(kv.OpenSession(1, 7).ok());
  EXPECT_EQ(kv.unpromised_blocks(), 3);
  EXPECT_EQ(kv.OpenSession(2, 4).code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(kv.OpenSession(2).ok());  // no reservation: lives on the 3 unpromised blocks
  std::vector<int32_t> chain(12);
  for (int32_t i = 0; i < 12; ++i) chain[i] = i - 1;
  ASSERT_TRUE(kv.Append(2, 0, chain).ok());  // 3 blocks
  auto more = kv.Append(2, 0, std::vector<int32_t>{-1});
  ASSERT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(more.status().message().find("promised"), std::string::npos) << more.status();
  // Session 1 still gets all of its 7 blocks, although only 7 are free.
  std::vector<int32_t> chain28(28);
  for (int32_t i = 0; i < 28; ++i) chain28[i] = i - 1;
  ASSERT_TRUE(kv.Append(1, 0, chain28).ok());
  EXPECT_EQ(kv.blocks_held(1), 7);
  EXPECT_EQ(kv.free_blocks(), 0);
  EXPECT_EQ(kv.Stats().reservation_overruns, 0);
  EXPECT_TRUE(kv.CheckInvariants().ok());
  // Closing session 2 frees unpromised blocks; session 1 may borrow them (an overrun).
  ASSERT_TRUE(kv.CloseSession(2).ok());
  ASSERT_TRUE(kv.Append(1, 0, std::vector<int32_t>{-1}).ok());
  EXPECT_EQ(kv.Stats().reservation_overruns, 1);
  EXPECT_EQ(kv.Stats().blocks_reserved, 7);
  // Closing session 1 returns everything.
  ASSERT_TRUE(kv.CloseSession(1).ok());
  EXPECT_EQ(kv.unpromised_blocks(), 10);
  EXPECT_EQ(kv.Stats().blocks_reserved, 0);
  EXPECT_TRUE(kv.CheckInvariants().ok());
}

TEST(KvCache, ReservationBlocksFormula) {
  // ceil(tokens / block) + 4 per partition + 2; nothing without tokens.
  EXPECT_EQ(ReservationBlocks(0, 5, 16), 0);
  EXPECT_EQ(ReservationBlocks(256, 0, 16), 16 + 2);
  EXPECT_EQ(ReservationBlocks(257, 0, 16), 17 + 2);
  EXPECT_EQ(ReservationBlocks(256 + 10 * 8, 10, 16), 21 + 40 + 2);
}

TEST(KvCache, F16LayoutAndByteBudget) {
  KvConfig c = SmallConfig(0, ElemType::kF16);
  EXPECT_EQ(c.row_bytes(), 8u);
  EXPECT_EQ(c.block_bytes(), 2u * 2 * 4 * 8);
  c.capacity_tokens = KvConfig::TokensForBytes(c, 10 * c.block_bytes() + 5);
  EXPECT_EQ(c.capacity_tokens, 40);
  KvCache kv(c);
  EXPECT_EQ(kv.Stats().blocks_total, 10);
  ASSERT_TRUE(kv.OpenSession(1).ok());
  auto s = kv.Append(1, 0, std::vector<int32_t>{-1, 0, 1, 2, 3});
  ASSERT_TRUE(s.ok());
  const Sequence* seq = kv.Find(1, 0);
  // Rows of different slots, layers, K and V never overlap.
  std::set<const uint8_t*> rows;
  for (int32_t slot = 0; slot < 5; ++slot) {
    for (int32_t l = 0; l < 2; ++l) {
      EXPECT_TRUE(rows.insert(kv.KeyRow(*seq, l, slot)).second);
      EXPECT_TRUE(rows.insert(kv.ValueRow(*seq, l, slot)).second);
    }
  }
}

}  // namespace
}  // namespace pipeinfer::kv
