#include "router/admission.h"

#include <prometheus/gauge.h>

#include <chrono>

namespace pipeinfer::router {

// How often a queued request looks at whether its client is still there.
constexpr std::chrono::milliseconds kGonePoll{100};

Admission::Admission(int max_inflight, int max_queue, prometheus::Gauge* inflight_gauge,
                     prometheus::Gauge* queue_gauge)
    : max_inflight_(max_inflight),
      max_queue_(max_queue),
      inflight_gauge_(inflight_gauge),
      queue_gauge_(queue_gauge) {}

std::shared_ptr<Admission::Slot> Admission::Acquire(const std::function<bool()>& gone,
                                                    bool* gave_up) {
  if (gave_up) *gave_up = false;
  std::unique_lock<std::mutex> l(mu_);
  if (inflight_ >= max_inflight_) {
    if (queued_ >= max_queue_) return nullptr;
    ++queued_;
    queue_gauge_->Set(queued_);
    const auto free_slot = [&] { return inflight_ < max_inflight_; };
    bool abandoned = false;
    if (!gone) {
      cv_.wait(l, free_slot);
    } else {
      while (!cv_.wait_for(l, kGonePoll, free_slot)) {
        if (gone()) {
          abandoned = true;
          break;
        }
      }
    }
    --queued_;
    queue_gauge_->Set(queued_);
    if (abandoned) {
      if (gave_up) *gave_up = true;
      return nullptr;
    }
  }
  ++inflight_;
  inflight_gauge_->Set(inflight_);
  return std::make_shared<Slot>(this);
}

void Admission::Release() {
  std::lock_guard<std::mutex> l(mu_);
  --inflight_;
  inflight_gauge_->Set(inflight_);
  cv_.notify_one();
}

int Admission::Busy() {
  std::lock_guard<std::mutex> l(mu_);
  return inflight_ + queued_;
}

}  // namespace pipeinfer::router
