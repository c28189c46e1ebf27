// The pipeline ownership rules (stage.proto section 2a), on a virtual clock: who may take the
// pipeline when, and the lockout bound against an adversary that plays every move at random.
#include "stage_server/pipeline_ownership.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <random>
#include <string>

namespace pipeinfer::stage_server {
namespace {

using std::chrono::milliseconds;
using Verdict = PipelineOwnership::Verdict;
using TP = PipelineOwnership::TimePoint;

constexpr milliseconds kLease{2000};
constexpr uint64_t kMaxEpoch = std::numeric_limits<uint64_t>::max();

PipelineOwnership::Open Open(const std::string& id, uint64_t epoch) { return {id, id, id, epoch}; }

TP At(int64_t ms) { return TP(milliseconds(1000000 + ms)); }

TEST(PipelineOwnershipTest, WithoutOwnerAnyEpochIsAccepted) {
  PipelineOwnership own(kLease);
  EXPECT_EQ(own.epoch(), 0u);
  ASSERT_EQ(own.Decide(Open("rogue", kMaxEpoch), At(0), At(0)).verdict, Verdict::kAccept);
  own.Grant(Open("rogue", kMaxEpoch), At(0));
  EXPECT_TRUE(own.owned());
  EXPECT_EQ(own.epoch(), kMaxEpoch);
  // The rogue disconnects: a far smaller epoch from another controller is accepted at once.
  own.Release();
  EXPECT_FALSE(own.owned());
  EXPECT_EQ(own.Decide(Open("draft", 5), At(1), At(0)).verdict, Verdict::kAccept);
  own.Grant(Open("draft", 5), At(1));
  EXPECT_TRUE(own.IsCurrent("draft", 5));
  EXPECT_FALSE(own.IsCurrent("rogue", kMaxEpoch));
}

TEST(PipelineOwnershipTest, TheOwnerReconnectsWithAGreaterEpochOnly) {
  PipelineOwnership own(kLease);
  own.Grant(Open("draft", 100), At(0));
  EXPECT_EQ(own.Decide(Open("draft", 101), At(10), At(10)).verdict, Verdict::kAccept);
  EXPECT_EQ(own.Decide(Open("draft", 100), At(10), At(10)).verdict, Verdict::kWait);
  EXPECT_EQ(own.Decide(Open("draft", 99), At(10), At(10)).verdict, Verdict::kWait);
  // The same controller_id from another certificate is another key: no reconnect.
  PipelineOwnership::Open spoof{"draft", "draft\ncert:rogue", "cert:rogue", 101};
  PipelineOwnership tls(kLease);
  tls.Grant({"draft", "draft\ncert:draft", "cert:draft", 100}, At(0));
  EXPECT_EQ(tls.Decide(spoof, At(10), At(10)).verdict, Verdict::kWait);
}

TEST(PipelineOwnershipTest, AnIdleOwnerIsDisplacedAfterTheLease) {
  PipelineOwnership own(kLease);
  own.Grant(Open("rogue", kMaxEpoch), At(0));
  // Active 1 ms ago, or idle one millisecond short of the lease: must wait.
  EXPECT_EQ(own.Decide(Open("draft", 1), At(1500), At(1499)).verdict, Verdict::kWait);
  EXPECT_EQ(own.Decide(Open("draft", 1), At(1999), At(0)).verdict, Verdict::kWait);
  // Idle for exactly the lease.
  EXPECT_EQ(own.Decide(Open("draft", 1), At(2000), At(0)).verdict, Verdict::kAccept);
}

TEST(PipelineOwnershipTest, AChallengerThatKeepsAskingDisplacesAnActiveOwnerAfterTheLease) {
  PipelineOwnership own(kLease);
  own.Grant(Open("rogue", kMaxEpoch), At(0));
  // The draft asks every 500 ms while the rogue's link is always active; the rogue also
  // "reconnects" with its own key between the asks, which must not restart its tenure.
  uint64_t rogue_epoch = kMaxEpoch - 100;
  own.Grant(Open("rogue", rogue_epoch), At(0));
  for (int64_t t = 100; t < 2100; t += 500) {
    EXPECT_EQ(own.Decide(Open("draft", 7), At(t), At(t)).verdict, Verdict::kWait) << t;
    ASSERT_EQ(own.Decide(Open("rogue", ++rogue_epoch), At(t + 1), At(t + 1)).verdict,
              Verdict::kAccept);
    own.Grant(Open("rogue", rogue_epoch), At(t + 1));
  }
  // Asking since t = 100: accepted at t = 2100 (L after the first ask), not before.
  EXPECT_EQ(own.Decide(Open("draft", 7), At(2099), At(2099)).verdict, Verdict::kWait);
  EXPECT_EQ(own.Decide(Open("draft", 7), At(2100), At(2100)).verdict, Verdict::kAccept);
}

TEST(PipelineOwnershipTest, ReleasingAndRegrabbingDoesNotRestartTheTenure) {
  PipelineOwnership own(kLease);
  own.Grant(Open("rogue", 10), At(0));
  EXPECT_EQ(own.Decide(Open("draft", 7), At(100), At(100)).verdict, Verdict::kWait);
  // The rogue drops its link and grabs the free pipeline again before the draft asks.
  own.Release();
  ASSERT_EQ(own.Decide(Open("rogue", 11), At(1500), At(1500)).verdict, Verdict::kAccept);
  own.Grant(Open("rogue", 11), At(1500));
  EXPECT_EQ(own.Decide(Open("draft", 7), At(2099), At(2099)).verdict, Verdict::kWait);
  EXPECT_EQ(own.Decide(Open("draft", 7), At(2100), At(2100)).verdict, Verdict::kAccept);
}

TEST(PipelineOwnershipTest, TheOwnersPrincipalCannotChallengeItselfAndOlderChallengersGoFirst) {
  PipelineOwnership own(kLease);
  own.Grant(Open("a", 1), At(0));
  // "a" under another controller id of the same certificate: no contest for it.
  PipelineOwnership::Open a2{"a2", "a2\ncert:a", "a", 1};
  EXPECT_EQ(own.Decide(a2, At(5000), At(4999)).verdict, Verdict::kWait);
  EXPECT_EQ(own.challengers(), 0u);
  // b asks first, c later: b wins the contest; c, asking at the same instant, does not.
  EXPECT_EQ(own.Decide(Open("b", 1), At(100), At(100)).verdict, Verdict::kWait);
  EXPECT_EQ(own.Decide(Open("c", 1), At(200), At(200)).verdict, Verdict::kWait);
  EXPECT_EQ(own.Decide(Open("c", 1), At(2200), At(2200)).verdict, Verdict::kWait);
  EXPECT_EQ(own.Decide(Open("b", 1), At(2200), At(2200)).verdict, Verdict::kAccept);
  own.Grant(Open("b", 1), At(2200));
  EXPECT_EQ(own.challengers(), 1u);
}

TEST(PipelineOwnershipTest, AContestLapsesAfterAPauseLongerThanTheGap) {
  PipelineOwnership own(kLease);
  ASSERT_EQ(own.contest_gap(), milliseconds(5000));  // max(L, 5 s)
  own.Grant(Open("rogue", 1), At(0));
  EXPECT_EQ(own.Decide(Open("draft", 1), At(0), At(0)).verdict, Verdict::kWait);
  // Next ask 5001 ms later: the record lapsed and restarts, so L more is needed.
  EXPECT_EQ(own.Decide(Open("draft", 1), At(5001), At(5001)).verdict, Verdict::kWait);
  EXPECT_EQ(own.Decide(Open("draft", 1), At(7000), At(7000)).verdict, Verdict::kWait);
  EXPECT_EQ(own.Decide(Open("draft", 1), At(7001), At(7001)).verdict, Verdict::kAccept);
}

TEST(PipelineOwnershipTest, ResultsStreamsPairWithTheOwner) {
  using RV = PipelineOwnership::ResultsVerdict;
  PipelineOwnership own(kLease);
  // Nobody owns the pipeline: a Results stream opened before its Pipeline stream is attached.
  EXPECT_EQ(own.DecideResults("draft", 5, false), RV::kAttach);
  own.Grant(Open("rogue", kMaxEpoch), At(0));
  EXPECT_EQ(own.DecideResults("rogue", kMaxEpoch, false), RV::kAttach);
  // The owner has its own Results stream: another controller's waits, and is not attached.
  EXPECT_EQ(own.DecideResults("draft", 5, true), RV::kWait);
  // The owner has none: attaching another one displaces nothing that belongs to the owner.
  EXPECT_EQ(own.DecideResults("draft", 5, false), RV::kAttach);
  own.Release();
  EXPECT_EQ(own.DecideResults("draft", 5, true), RV::kAttach);
}

// The lockout bound: an adversary with ONE principal (any controller ids, any epochs, opening,
// keeping busy, going idle and dropping its links at random) against a controller that asks every
// `ask` ms while it does not own the pipeline and keeps its own link active. Every interval in
// which the controller does not own the pipeline lasts at most L + ask (it starts asking at the
// latest `ask` after losing it).
TEST(PipelineOwnershipTest, RandomAdversaryNeverLocksOutLongerThanTheBound) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937_64 rng(seed);
    PipelineOwnership own(kLease);
    constexpr int64_t kAsk = 1000, kStep = 50, kEnd = 600000;
    enum class Who { kNone, kDraft, kRogue } owner = Who::kNone;
    int64_t last_activity = 0, draft_next_ask = 0, locked_out_since = 0, worst = 0;
    uint64_t draft_epoch = 1000;
    bool rogue_busy = true;
    for (int64_t t = 0; t <= kEnd; t += kStep) {
      // The adversary: one random move per step.
      switch (rng() % 6) {
        case 0: {  // open with a random controller id and epoch
          const std::string id = (rng() % 2) ? "rogue" : "draft";  // may claim the draft's id
          PipelineOwnership::Open o{id, id + "\nrogue", "rogue",
                                    (rng() % 2) ? kMaxEpoch : rng() % 5000};
          if (own.Decide(o, At(t), At(last_activity)).verdict == Verdict::kAccept) {
            own.Grant(o, At(t));
            owner = Who::kRogue;
            last_activity = t;
          }
          break;
        }
        case 1:  // drop its link
          if (owner == Who::kRogue) {
            own.Release();
            owner = Who::kNone;
          }
          break;
        case 2:
          rogue_busy = !rogue_busy;
          break;
        default:
          break;
      }
      if (owner == Who::kRogue && rogue_busy) last_activity = t;
      if (owner == Who::kDraft) last_activity = t;  // the controller's keepalives
      if (owner == Who::kDraft) {
        locked_out_since = -1;
        continue;
      }
      if (locked_out_since < 0) {
        locked_out_since = t;
        draft_next_ask = t + static_cast<int64_t>(rng() % kAsk);  // within `ask` of losing it
      }
      if (t >= draft_next_ask) {
        PipelineOwnership::Open d{"draft", "draft\ndraft", "draft", ++draft_epoch};
        if (own.Decide(d, At(t), At(last_activity)).verdict == Verdict::kAccept) {
          own.Grant(d, At(t));
          owner = Who::kDraft;
          worst = std::max(worst, t - locked_out_since);
          locked_out_since = -1;
          continue;
        }
        draft_next_ask = t + kAsk;
      }
    }
    EXPECT_LE(worst, kLease.count() + kAsk + kStep) << "seed " << seed;
    EXPECT_GT(worst, 0) << "the adversary never took the pipeline (seed " << seed << ")";
  }
}

}  // namespace
}  // namespace pipeinfer::stage_server
