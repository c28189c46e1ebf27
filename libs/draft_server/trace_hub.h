// Run tracing for live views (docs/tracing.md): the draft service's sessions publish one event per
// run outcome and one per finished request while at least one Trace caller listens; with nobody
// listening a session pays one relaxed atomic load per outcome. Each subscriber has a bounded
// queue: a slow reader loses its oldest events (counted in TraceEvent.dropped), never blocks the
// sessions. The hub also aligns the stages' clocks to the draft service's (AlignSpans). Private to
// the draft_server library; no gRPC.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pipeinfer/v1/draft.pb.h"
#include "pipeinfer/v1/stage.pb.h"

namespace pipeinfer::draft_server {

// Wall-clock microseconds since the Unix epoch.
uint64_t UnixMicros();

class TraceHub {
 public:
  explicit TraceHub(size_t queue_limit = 4096) : queue_limit_(queue_limit) {}

  // True while someone listens (cheap: producers check it before building an event).
  bool active() const { return listeners_.load(std::memory_order_relaxed) > 0; }

  class Subscription {
   public:
    ~Subscription();
    // The next event; false after `wait` without one (the caller checks for cancellation).
    bool Next(v1::TraceEvent* ev, std::chrono::milliseconds wait);

   private:
    friend class TraceHub;
    TraceHub* hub_ = nullptr;
    std::string request_id_;  // empty: every request
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<v1::TraceEvent> queue_;
    uint64_t dropped_ = 0;
  };

  // Events of `request_id` (empty: all) from now on, until the subscription is destroyed.
  std::shared_ptr<Subscription> Subscribe(std::string request_id);

  // Hands `ev` to every matching subscriber (no-op when nobody listens).
  void Publish(const v1::TraceEvent& ev);

  // The stages' spans of a run on the draft service's clock. Each stage's clock offset is taken as
  // the smallest gap seen so far between the run's departure (from the draft service for stage 0,
  // from the previous stage otherwise) and its arrival, when that gap is negative (the stage's
  // clock is behind); a positive smallest gap is link latency (or a clock ahead by less than it)
  // and is left alone. Spans are then clamped so that no run starts on a stage before it was sent
  // or before it ended on the previous stage, and none ends after its outcome came back.
  void AlignSpans(const google::protobuf::RepeatedPtrField<v1::StageTiming>& trace,
                  uint64_t sent_us, uint64_t done_us, v1::TraceEvent* ev);

 private:
  void Remove(Subscription* s);

  const size_t queue_limit_;
  std::atomic<int> listeners_{0};
  std::mutex mu_;
  std::vector<Subscription*> subs_;
  std::mutex align_mu_;
  std::vector<int64_t> min_gap_;  // per stage, microseconds (INT64_MAX: none seen)
};

}  // namespace pipeinfer::draft_server
