// TraceHub: nothing is kept or delivered without a subscriber, per-request filtering, order, the
// bounded queue, and the clock alignment of stage spans (checked against hand-computed values).
#include "draft_server/trace_hub.h"

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

namespace pipeinfer::draft_server {
namespace {

using std::chrono::milliseconds;

v1::TraceEvent RunEvent(const std::string& request, uint64_t run_id) {
  v1::TraceEvent e;
  e.set_request_id(request);
  e.set_run_id(run_id);
  return e;
}

TEST(TraceHubTest, NothingWithoutSubscribersAndNoReplayForLateOnes) {
  TraceHub hub;
  EXPECT_FALSE(hub.active());
  hub.Publish(RunEvent("a", 1));  // nobody listens: dropped at once
  auto sub = hub.Subscribe("");
  EXPECT_TRUE(hub.active());
  v1::TraceEvent ev;
  EXPECT_FALSE(sub->Next(&ev, milliseconds(20)));
  sub.reset();
  EXPECT_FALSE(hub.active());
}

TEST(TraceHubTest, FilterOrderAndBoundedQueue) {
  TraceHub hub(/*queue_limit=*/3);
  auto all = hub.Subscribe("");
  auto only_b = hub.Subscribe("b");
  for (uint64_t i = 1; i <= 5; ++i) hub.Publish(RunEvent(i % 2 ? "a" : "b", i));
  v1::TraceEvent ev;
  // `all` kept the newest 3 of 5 (runs 3, 4, 5); the first one it reads says 2 were lost.
  ASSERT_TRUE(all->Next(&ev, milliseconds(10)));
  EXPECT_EQ(ev.run_id(), 3u);
  EXPECT_EQ(ev.dropped(), 2u);
  ASSERT_TRUE(all->Next(&ev, milliseconds(10)));
  EXPECT_EQ(ev.run_id(), 4u);
  EXPECT_EQ(ev.dropped(), 0u);
  ASSERT_TRUE(all->Next(&ev, milliseconds(10)));
  EXPECT_EQ(ev.run_id(), 5u);
  EXPECT_FALSE(all->Next(&ev, milliseconds(10)));
  // `only_b` got request b's runs, in order, none lost.
  ASSERT_TRUE(only_b->Next(&ev, milliseconds(10)));
  EXPECT_EQ(ev.run_id(), 2u);
  ASSERT_TRUE(only_b->Next(&ev, milliseconds(10)));
  EXPECT_EQ(ev.run_id(), 4u);
  EXPECT_EQ(ev.dropped(), 0u);
  EXPECT_FALSE(only_b->Next(&ev, milliseconds(10)));
}

TEST(TraceHubTest, NextWakesOnPublishFromAnotherThread) {
  TraceHub hub;
  auto sub = hub.Subscribe("");
  std::thread t([&] {
    std::this_thread::sleep_for(milliseconds(30));
    hub.Publish(RunEvent("x", 7));
  });
  v1::TraceEvent ev;
  EXPECT_TRUE(sub->Next(&ev, milliseconds(2000)));
  EXPECT_EQ(ev.run_id(), 7u);
  t.join();
}

v1::StageTiming Timing(uint32_t stage, uint64_t arrival, uint64_t start, uint64_t end) {
  v1::StageTiming t;
  t.set_stage_index(stage);
  t.set_arrival_unix_us(arrival);
  t.set_start_unix_us(start);
  t.set_end_unix_us(end);
  t.set_batch_runs(1);
  return t;
}

TEST(TraceHubTest, SameClocksKeepTheStagesTimes) {
  TraceHub hub;
  google::protobuf::RepeatedPtrField<v1::StageTiming> trace;
  *trace.Add() = Timing(0, 1000100, 1000150, 1010150);
  *trace.Add() = Timing(1, 1010300, 1010300, 1020300);
  v1::TraceEvent ev;
  hub.AlignSpans(trace, /*sent_us=*/1000000, /*done_us=*/1020500, &ev);
  ASSERT_EQ(ev.spans_size(), 2);
  EXPECT_EQ(ev.spans(0).start_us(), 1000150u);
  EXPECT_EQ(ev.spans(0).end_us(), 1010150u);
  EXPECT_EQ(ev.spans(1).start_us(), 1010300u);
  EXPECT_EQ(ev.spans(1).end_us(), 1020300u);
}

TEST(TraceHubTest, AStageClockBehindIsShiftedByTheSmallestGap) {
  TraceHub hub;
  // Stage 1's clock is 5000 us behind stage 0's (and the draft service's); the link takes 200 us.
  // First run: arrival - departure = 200 - 5000 = -4800 -> shift stage 1 by +4800.
  google::protobuf::RepeatedPtrField<v1::StageTiming> trace;
  *trace.Add() = Timing(0, 2000100, 2000100, 2010100);
  *trace.Add() = Timing(1, 2010300 - 5000, 2010300 - 5000, 2020300 - 5000);
  v1::TraceEvent ev;
  hub.AlignSpans(trace, 2000000, 2030000, &ev);
  ASSERT_EQ(ev.spans_size(), 2);
  EXPECT_EQ(ev.spans(1).start_us(), 2010300u - 200u);  // the smallest gap (200 us) is unknown
  EXPECT_EQ(ev.spans(1).end_us(), 2020300u - 200u);
  EXPECT_GE(ev.spans(1).start_us(), ev.spans(0).end_us());
  // A later run with a smaller gap (50 us) refines the offset to 4950.
  trace.Clear();
  *trace.Add() = Timing(0, 3000100, 3000100, 3010100);
  *trace.Add() = Timing(1, 3010150 - 5000, 3010150 - 5000, 3020150 - 5000);
  v1::TraceEvent ev2;
  hub.AlignSpans(trace, 3000000, 3030000, &ev2);
  EXPECT_EQ(ev2.spans(1).start_us(), 3010150u - 50u);
}

TEST(TraceHubTest, SpansAreClampedBetweenSendAndOutcome) {
  TraceHub hub;
  // A stage clock ahead by 1 ms cannot be told from latency: left as is, but no span may end
  // after the outcome came back, and none starts before the run was sent.
  google::protobuf::RepeatedPtrField<v1::StageTiming> trace;
  *trace.Add() = Timing(0, 5001000, 5001000, 5009000);
  v1::TraceEvent ev;
  hub.AlignSpans(trace, 5000000, 5008000, &ev);
  ASSERT_EQ(ev.spans_size(), 1);
  EXPECT_EQ(ev.spans(0).start_us(), 5001000u);
  EXPECT_EQ(ev.spans(0).end_us(), 5008000u);
  // Stamps of an old stage (0): no span.
  trace.Clear();
  *trace.Add() = Timing(0, 0, 0, 0);
  v1::TraceEvent ev2;
  hub.AlignSpans(trace, 5000000, 5008000, &ev2);
  EXPECT_EQ(ev2.spans_size(), 0);
}

}  // namespace
}  // namespace pipeinfer::draft_server
