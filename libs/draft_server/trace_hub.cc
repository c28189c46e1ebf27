#include "draft_server/trace_hub.h"

#include <algorithm>
#include <climits>

namespace pipeinfer::draft_server {

uint64_t UnixMicros() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

TraceHub::Subscription::~Subscription() {
  if (hub_) hub_->Remove(this);
}

bool TraceHub::Subscription::Next(v1::TraceEvent* ev, std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> l(mu_);
  if (!cv_.wait_for(l, wait, [this] { return !queue_.empty(); })) return false;
  *ev = std::move(queue_.front());
  queue_.pop_front();
  ev->set_dropped(dropped_);
  dropped_ = 0;
  return true;
}

std::shared_ptr<TraceHub::Subscription> TraceHub::Subscribe(std::string request_id) {
  auto s = std::make_shared<Subscription>();
  s->hub_ = this;
  s->request_id_ = std::move(request_id);
  std::lock_guard<std::mutex> l(mu_);
  subs_.push_back(s.get());
  listeners_.store(static_cast<int>(subs_.size()), std::memory_order_relaxed);
  return s;
}

void TraceHub::Remove(Subscription* s) {
  std::lock_guard<std::mutex> l(mu_);
  subs_.erase(std::remove(subs_.begin(), subs_.end(), s), subs_.end());
  listeners_.store(static_cast<int>(subs_.size()), std::memory_order_relaxed);
}

void TraceHub::Publish(const v1::TraceEvent& ev) {
  if (!active()) return;
  std::lock_guard<std::mutex> l(mu_);
  for (Subscription* s : subs_) {
    if (!s->request_id_.empty() && s->request_id_ != ev.request_id()) continue;
    {
      std::lock_guard<std::mutex> sl(s->mu_);
      if (s->queue_.size() >= queue_limit_) {
        s->queue_.pop_front();
        ++s->dropped_;
      }
      s->queue_.push_back(ev);
    }
    s->cv_.notify_one();
  }
}

void TraceHub::AlignSpans(const google::protobuf::RepeatedPtrField<v1::StageTiming>& trace,
                          uint64_t sent_us, uint64_t done_us, v1::TraceEvent* ev) {
  std::lock_guard<std::mutex> l(align_mu_);
  int64_t offset = 0;                                    // previous hop's clock -> ours
  int64_t prev_end = static_cast<int64_t>(sent_us);      // on our clock
  int64_t prev_end_raw = static_cast<int64_t>(sent_us);  // on the previous hop's clock
  for (const v1::StageTiming& t : trace) {
    if (t.start_unix_us() == 0 || t.end_unix_us() < t.start_unix_us()) continue;  // old stage
    const uint32_t stage = t.stage_index();
    if (min_gap_.size() <= stage) min_gap_.resize(stage + 1, INT64_MAX);
    const int64_t arrival =
        static_cast<int64_t>(t.arrival_unix_us() ? t.arrival_unix_us() : t.start_unix_us());
    // From the previous hop's departure (its clock) to this arrival (this stage's clock).
    min_gap_[stage] = std::min(min_gap_[stage], arrival - prev_end_raw);
    offset -= std::min<int64_t>(0, min_gap_[stage]);  // this stage's clock -> ours
    int64_t start = static_cast<int64_t>(t.start_unix_us()) + offset;
    int64_t end = static_cast<int64_t>(t.end_unix_us()) + offset;
    start = std::max(start, prev_end);
    end = std::max(end, start);
    if (done_us > 0) end = std::min(end, static_cast<int64_t>(done_us));
    start = std::min(start, end);
    v1::TraceSpan* s = ev->add_spans();
    s->set_stage(stage);
    s->set_start_us(static_cast<uint64_t>(start));
    s->set_end_us(static_cast<uint64_t>(end));
    s->set_batch_runs(t.batch_runs());
    s->set_stopped(t.stopped());
    prev_end = end;
    prev_end_raw = static_cast<int64_t>(t.end_unix_us());
  }
}

}  // namespace pipeinfer::draft_server
