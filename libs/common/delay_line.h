// Benchmark-only link emulation, applied by the sender (`--emulate-link-us`,
// `--emulate-link-mbps`): a DelayLine runs each send handed to it on its own thread, in the order
// they were handed over, so the caller never waits for the link. With a rate R, a message of B
// bytes (plus framing, see link_pacer.h) first occupies the line for B × 8 / R behind the message
// before it (serialization); it is then delivered after the fixed delay L:
//
//   run at = max(post time, previous message's transmission end) + wire bytes × 8 / R + L
//
// Transmission ends never decrease and L is the same for every send, so no message overtakes
// another. Rate 0 = latency only (run at post time + L).
//
// Callers that emulate neither latency nor rate create no DelayLine at all and send inline.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "common/link_pacer.h"

namespace pipeinfer {

class DelayLine {
 public:
  using Clock = std::chrono::steady_clock;

  // rate_mbps <= 0: no serialization delay.
  explicit DelayLine(std::chrono::microseconds delay, double rate_mbps = 0);
  ~DelayLine();  // Discard()
  DelayLine(const DelayLine&) = delete;
  DelayLine& operator=(const DelayLine&) = delete;

  std::chrono::microseconds delay() const { return delay_; }
  double rate_mbps() const { return pacer_.rate_mbps(); }

  // Queues `send`, a message of `bytes` serialized bytes (ByteSizeLong(); framing is added here),
  // to run when its transmission ends plus the delay (see above). Returns false (and drops `send`)
  // once the line is closed by Drain or Discard.
  bool Post(std::function<void()> send, size_t bytes = 0);
  // Closes the line, runs everything queued at its time, and joins the thread. Idempotent.
  void Drain();
  // Closes the line, drops everything not yet started, and joins the thread. Idempotent.
  void Discard();

 private:
  struct Item {
    Clock::time_point at;
    std::function<void()> send;
  };
  void Loop();
  void Close(bool drop);

  const std::chrono::microseconds delay_;
  std::mutex mu_;
  std::condition_variable cv_;
  LinkPacer pacer_;  // guarded by mu_
  std::deque<Item> items_;
  bool closed_ = false;
  bool drop_ = false;
  std::mutex join_mu_;  // serializes joining
  std::thread thread_;
};

}  // namespace pipeinfer
