// KV admission: requests are reserved exactly as the stages count blocks (kv::ReservationBlocks
// per stage), wait in FIFO order while they do not fit (a later request that would fit does not
// overtake an earlier one), are refused precisely when they can never
// fit (OUT_OF_RANGE), when the queue is full or at their deadline (RESOURCE_EXHAUSTED), and a new
// epoch forgets old reservations.
#include "draft_server/kv_admission.h"

#include <atomic>
#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "kv/kv_cache.h"

namespace pipeinfer::draft_server {
namespace {

using Clock = KvAdmission::Clock;
using std::chrono::milliseconds;

auto Soon(int ms = 2000) { return Clock::now() + milliseconds(ms); }

TEST(KvAdmission, ReservesPerStageWithTheStagesFormula) {
  KvAdmission a(8);
  // Two stages with different block sizes.
  a.SetStages({{0, 16, 100}, {1, 32, 40}});
  const KvDemand d{256, 2};  // stage 0: 16 + 8 + 2 = 26 blocks; stage 1: 8 + 8 + 2 = 18 blocks
  ASSERT_EQ(kv::ReservationBlocks(256, 2, 16), 26);
  ASSERT_EQ(kv::ReservationBlocks(256, 2, 32), 18);
  auto t1 = a.Acquire(d, Soon(), nullptr);
  ASSERT_TRUE(t1.ok()) << t1.status();
  auto t2 = a.Acquire(d, Soon(), nullptr);  // stage 1: 36 of 40
  ASSERT_TRUE(t2.ok()) << t2.status();
  EXPECT_NEAR(a.stats().max_reserved_fraction, 36.0 / 40, 1e-9);
  // A third does not fit on stage 1 (54 > 40): it times out with a message naming the stage.
  auto t3 = a.Acquire(d, Clock::now() + milliseconds(50), nullptr);
  ASSERT_EQ(t3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(t3.status().message().find("stage 1"), std::string::npos) << t3.status();
  // Releasing one makes room.
  t1->reset();
  auto t4 = a.Acquire(d, Soon(), nullptr);
  EXPECT_TRUE(t4.ok()) << t4.status();
}

TEST(KvAdmission, RefusesWhatCanNeverFitAtOnce) {
  KvAdmission a(8);
  a.SetStages({{0, 16, 20}});
  const auto t0 = Clock::now();
  auto t = a.Acquire({300, 0}, Soon(5000), nullptr);            // 19 + 2 = 21 > 20
  ASSERT_EQ(t.status().code(), absl::StatusCode::kOutOfRange);  // retrying cannot help
  EXPECT_NE(t.status().message().find("never"), std::string::npos) << t.status();
  EXPECT_LT(Clock::now() - t0, milliseconds(100));
  EXPECT_TRUE(a.Acquire({288, 0}, Soon(), nullptr).ok());  // 18 + 2 = 20: fits exactly
}

TEST(KvAdmission, AWaiterIsNeverOvertaken) {
  KvAdmission a(8);
  a.SetStages({{0, 16, 40}});
  auto big = a.Acquire({16 * 30, 0}, Soon(), nullptr);  // 32 blocks
  ASSERT_TRUE(big.ok());
  std::atomic<int> admitted{0};
  std::thread w1([&] {
    auto t = a.Acquire({16 * 20, 0}, Soon(5000), nullptr);  // 22 blocks: waits
    ASSERT_TRUE(t.ok()) << t.status();
    ++admitted;
  });
  while (a.stats().waiting < 1) std::this_thread::sleep_for(milliseconds(1));
  std::thread w2([&] {
    // 4 blocks would fit now (8 free), but it must not overtake the earlier waiter.
    auto t = a.Acquire({16 * 2, 0}, Soon(5000), nullptr);
    ASSERT_TRUE(t.ok()) << t.status();
    ++admitted;
  });
  while (a.stats().waiting < 2) std::this_thread::sleep_for(milliseconds(1));
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_EQ(admitted.load(), 0);
  EXPECT_EQ(a.stats().waiting, 2u);
  big->reset();  // room for both, in order
  w1.join();
  w2.join();
  EXPECT_EQ(admitted.load(), 2);
  EXPECT_EQ(a.stats().waiting, 0u);
}

TEST(KvAdmission, QueueBoundCancellationAndNewEpoch) {
  KvAdmission a(1);
  a.SetStages({{0, 16, 10}});
  auto hold = a.Acquire({16 * 8, 0}, Soon(), nullptr);  // all 10 blocks
  ASSERT_TRUE(hold.ok());
  std::atomic<bool> gone{false};
  std::thread waiter([&] {
    auto t = a.Acquire({16, 0}, Soon(5000), [&] { return gone.load(); });
    EXPECT_EQ(t.status().code(), absl::StatusCode::kCancelled);
  });
  while (a.stats().waiting < 1) std::this_thread::sleep_for(milliseconds(1));
  // The queue (1) is full: the next is refused at once.
  EXPECT_EQ(a.Acquire({16, 0}, Soon(), nullptr).status().code(),
            absl::StatusCode::kResourceExhausted);
  gone = true;
  waiter.join();
  EXPECT_EQ(a.stats().waiting, 0u);
  // A new epoch forgets the old reservation; the old ticket then releases nothing.
  a.SetStages({{0, 16, 10}});
  auto fresh = a.Acquire({16 * 8, 0}, Soon(), nullptr);
  ASSERT_TRUE(fresh.ok());
  hold->reset();
  EXPECT_NEAR(a.stats().max_reserved_fraction, 1.0, 1e-9);
}

}  // namespace
}  // namespace pipeinfer::draft_server
