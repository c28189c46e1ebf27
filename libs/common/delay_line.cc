#include "common/delay_line.h"

#include <utility>

namespace pipeinfer {

DelayLine::DelayLine(std::chrono::microseconds delay, double rate_mbps)
    : delay_(delay), pacer_(rate_mbps), thread_([this] { Loop(); }) {}

DelayLine::~DelayLine() { Discard(); }

bool DelayLine::Post(std::function<void()> send, size_t bytes) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (closed_) return false;
    items_.push_back({pacer_.Release(Clock::now(), bytes) + delay_, std::move(send)});
  }
  cv_.notify_all();
  return true;
}

void DelayLine::Drain() { Close(/*drop=*/false); }
void DelayLine::Discard() { Close(/*drop=*/true); }

void DelayLine::Close(bool drop) {
  {
    std::lock_guard<std::mutex> l(mu_);
    closed_ = true;
    if (drop) {
      drop_ = true;
      items_.clear();
    }
  }
  cv_.notify_all();
  std::lock_guard<std::mutex> j(join_mu_);
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void DelayLine::Loop() {
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    cv_.wait(l, [&] { return drop_ || closed_ || !items_.empty(); });
    if (drop_ || items_.empty()) return;  // dropped, or closed and drained
    const Clock::time_point at = items_.front().at;
    if (Clock::now() < at) {
      cv_.wait_until(l, at, [&] { return drop_; });
      if (drop_) return;
      continue;
    }
    std::function<void()> send = std::move(items_.front().send);
    items_.pop_front();
    l.unlock();
    send();
    l.lock();
  }
}

}  // namespace pipeinfer
