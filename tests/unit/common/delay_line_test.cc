// DelayLine (emulated link latency and rate): every send runs at least the delay after it was
// posted, in posting order, without blocking the poster; Drain runs what is queued, Discard drops
// it. With a rate, messages are also serialized one after the other (LinkPacer): message i of a
// burst leaves no earlier than (i + 1) × wire bytes × 8 / R + L after the burst, and an idle line
// saves up no credit for a later burst.
#include "common/delay_line.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace pipeinfer {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::microseconds;
using std::chrono::milliseconds;

TEST(DelayLineTest, DelaysEveryMessageAndKeepsOrder) {
  const microseconds delay(3000);
  DelayLine line(delay);
  struct Sent {
    int id;
    Clock::time_point posted, ran;
  };
  std::mutex mu;
  std::vector<Sent> sent;
  std::vector<Clock::time_point> posted(200);
  for (int i = 0; i < 200; ++i) {
    posted[i] = Clock::now();
    const Clock::time_point when = posted[i];
    const auto before = Clock::now();
    ASSERT_TRUE(line.Post([&, i, when] {
      std::lock_guard<std::mutex> l(mu);
      sent.push_back({i, when, Clock::now()});
    }));
    EXPECT_LT(Clock::now() - before, milliseconds(2)) << "Post must not wait for the delay";
    if (i % 10 == 0) std::this_thread::sleep_for(microseconds(700));  // bursts and gaps
  }
  line.Drain();
  ASSERT_EQ(sent.size(), 200u);
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(sent[i].id, i) << "order changed";
    EXPECT_GE(sent[i].ran - sent[i].posted, delay) << "message " << i << " left early";
  }
  EXPECT_FALSE(line.Post([] {})) << "a drained line takes no more messages";
}

TEST(DelayLineTest, SlowSendDoesNotReorder) {
  DelayLine line(microseconds(1000));
  std::vector<int> order;
  std::mutex mu;
  for (int i = 0; i < 20; ++i) {
    line.Post([&, i] {
      if (i == 3) std::this_thread::sleep_for(milliseconds(20));  // a slow write
      std::lock_guard<std::mutex> l(mu);
      order.push_back(i);
    });
  }
  line.Drain();
  ASSERT_EQ(order.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(order[i], i);
}

TEST(DelayLineTest, DiscardDropsWhatIsQueued) {
  std::atomic<int> ran{0};
  {
    DelayLine line(microseconds(200000));
    for (int i = 0; i < 10; ++i) line.Post([&] { ++ran; });
    const auto before = Clock::now();
    line.Discard();
    EXPECT_LT(Clock::now() - before, milliseconds(100)) << "Discard must not wait for the delay";
    EXPECT_FALSE(line.Post([&] { ++ran; }));
  }
  EXPECT_EQ(ran.load(), 0);
}

TEST(LinkPacerTest, SerializesBackToBackAndKeepsNoCreditWhileIdle) {
  // 8 Mbit/s = 1 byte per microsecond; 986 payload bytes + 14 framing = 1 ms on the wire.
  LinkPacer p(8);
  const size_t payload = 1000 - kLinkFramingBytes;
  EXPECT_EQ(p.Serialization(1000), milliseconds(1));
  const LinkPacer::Clock::time_point t0{std::chrono::seconds(100)};
  // A burst: each message queues behind the previous one.
  for (int i = 0; i < 5; ++i) EXPECT_EQ(p.Release(t0, payload), t0 + milliseconds(i + 1));
  // Handed over while the line is still busy: after the previous end.
  EXPECT_EQ(p.Release(t0 + microseconds(2500), payload), t0 + milliseconds(6));
  // After an idle gap: paced from its own hand-over time, the gap is not saved up.
  const auto t1 = t0 + milliseconds(50);
  EXPECT_EQ(p.Release(t1, payload), t1 + milliseconds(1));
  EXPECT_EQ(p.Release(t1, payload), t1 + milliseconds(2));
  // Empty messages still carry their framing.
  EXPECT_EQ(p.Release(t1 + milliseconds(10), 0), t1 + milliseconds(10) + microseconds(14));
}

TEST(LinkPacerTest, RateZeroDoesNotPace) {
  LinkPacer p(0);
  EXPECT_FALSE(p.pacing());
  const LinkPacer::Clock::time_point t0{std::chrono::seconds(7)};
  EXPECT_EQ(p.Release(t0, 1 << 20), t0);
  EXPECT_EQ(p.Release(t0, 1 << 20), t0);
  EXPECT_EQ(p.Serialization(1 << 20), LinkPacer::Clock::duration::zero());
}

// Posts `n` messages of `payload` bytes at once; returns when each ran, relative to the first post.
std::vector<Clock::duration> PostBurst(DelayLine& line, int n, size_t payload,
                                       std::vector<int>* order, std::mutex* mu) {
  std::vector<Clock::time_point> ran(n);
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < n; ++i) {
    const auto before = Clock::now();
    EXPECT_TRUE(line.Post(
        [&ran, order, mu, i] {
          std::lock_guard<std::mutex> l(*mu);
          ran[i] = Clock::now();
          order->push_back(i);
        },
        payload));
    EXPECT_LT(Clock::now() - before, milliseconds(2)) << "Post must not wait for the link";
  }
  // Wait until the whole burst ran (the line stays open).
  while (true) {
    {
      std::lock_guard<std::mutex> l(*mu);
      if (static_cast<int>(order->size()) >= n && ran[n - 1] != Clock::time_point{}) break;
    }
    std::this_thread::sleep_for(milliseconds(1));
  }
  std::vector<Clock::duration> rel;
  for (const auto& t : ran) rel.push_back(t - start);
  return rel;
}

TEST(DelayLineTest, RatePacesEveryMessageBySize) {
  // 8 Mbit/s: a 1000-byte message (with framing) takes 1 ms; L = 2 ms.
  const microseconds delay(2000);
  const size_t payload = 1000 - kLinkFramingBytes;
  DelayLine line(delay, 8);
  EXPECT_EQ(line.rate_mbps(), 8);
  std::mutex mu;
  std::vector<int> order;
  const int n = 20;
  const std::vector<Clock::duration> ran = PostBurst(line, n, payload, &order, &mu);
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(order[i], i) << "order changed";
    EXPECT_GE(ran[i], milliseconds(i + 1) + delay) << "message " << i << " left early";
  }
  // The burst is paced, not held back much beyond its serialization (generous for a busy host).
  EXPECT_LT(ran[n - 1], milliseconds(n) + delay + milliseconds(100));

  // Idle for longer than a burst takes: the next burst is paced from its own post time again.
  std::this_thread::sleep_for(milliseconds(60));
  order.clear();
  const std::vector<Clock::duration> again = PostBurst(line, 5, payload, &order, &mu);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(order[i], i);
    EXPECT_GE(again[i], milliseconds(i + 1) + delay) << "credit saved up while idle";
  }
  line.Drain();
}

TEST(DelayLineTest, RateZeroIgnoresSize) {
  const microseconds delay(1000);
  DelayLine line(delay);
  EXPECT_EQ(line.rate_mbps(), 0);
  std::mutex mu;
  std::vector<int> order;
  // 64 MiB per message would take seconds at any emulated rate; without a rate only L counts.
  const std::vector<Clock::duration> ran = PostBurst(line, 10, 64u << 20, &order, &mu);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(order[i], i);
    EXPECT_GE(ran[i], delay);
  }
  EXPECT_LT(ran[9], delay + milliseconds(100));
  line.Drain();
}

TEST(DelayLineTest, DestructorDiscards) {
  std::atomic<int> ran{0};
  const auto before = Clock::now();
  {
    DelayLine line(microseconds(500000));
    line.Post([&] { ++ran; });
  }
  EXPECT_LT(Clock::now() - before, milliseconds(200));
  EXPECT_EQ(ran.load(), 0);
}

}  // namespace
}  // namespace pipeinfer
