// Admission control: at most max_inflight requests generate at once and at most max_queue wait for
// a slot; a request beyond both is refused at once (HTTP 429 / RESOURCE_EXHAUSTED) instead of
// waiting without bound.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>

namespace prometheus {
class Gauge;
}  // namespace prometheus

namespace pipeinfer::router {

class Admission {
 public:
  // The gauges follow the number of requests generating and waiting.
  Admission(int max_inflight, int max_queue, prometheus::Gauge* inflight_gauge,
            prometheus::Gauge* queue_gauge);

  // A held slot; released when destroyed.
  class Slot {
   public:
    explicit Slot(Admission* a) : a_(a) {}
    ~Slot() { a_->Release(); }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;

   private:
    Admission* a_;
  };

  // A slot, after waiting in the queue if every slot is taken. Null when the queue is full too,
  // or when `gone` (the client went away; checked every 100 ms while waiting, may be empty) turned
  // true while waiting; then `*gave_up` (may be null) is set.
  std::shared_ptr<Slot> Acquire(const std::function<bool()>& gone = {}, bool* gave_up = nullptr);

  // Requests generating or waiting now.
  int Busy();

 private:
  void Release();

  std::mutex mu_;
  std::condition_variable cv_;
  const int max_inflight_;
  const int max_queue_;
  int inflight_ = 0;
  int queued_ = 0;
  prometheus::Gauge* inflight_gauge_;
  prometheus::Gauge* queue_gauge_;
};

}  // namespace pipeinfer::router
