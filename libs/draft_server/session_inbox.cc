#include "draft_server/session_inbox.h"

#include <utility>

namespace pipeinfer::draft_server {

void SessionInbox::Deliver(v1::ResultsDownstream outcome) {
  {
    std::lock_guard<std::mutex> l(mu_);
    outcomes_.push_back(std::move(outcome));
  }
  cv_.notify_all();
  if (waker_) waker_();
}

void SessionInbox::Fail(const absl::Status& status) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!failure_) failure_ = status;
  }
  cv_.notify_all();
  if (waker_) waker_();
}

bool SessionInbox::Waiting() const {
  return Waiting([](uint64_t) { return false; });
}

bool SessionInbox::Waiting(const std::function<bool(uint64_t run_id)>& ignored) const {
  std::lock_guard<std::mutex> l(mu_);
  if (failure_.has_value()) return true;
  for (const v1::ResultsDownstream& o : outcomes_) {
    if (!ignored(o.has_result() ? o.result().run_id() : o.tombstone().run_id())) return true;
  }
  return false;
}

absl::StatusOr<v1::ResultsDownstream> SessionInbox::Next(const std::function<bool()>& cancelled) {
  absl::StatusOr<std::optional<v1::ResultsDownstream>> next =
      NextUntil(cancelled, std::chrono::steady_clock::time_point::max());
  if (!next.ok()) return next.status();
  return std::move(**next);  // no deadline: only an outcome ends the wait
}

absl::StatusOr<std::optional<v1::ResultsDownstream>> SessionInbox::NextUntil(
    const std::function<bool()>& cancelled, std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    if (failure_) return *failure_;
    if (cancelled()) return absl::CancelledError("the caller cancelled the request");
    if (!outcomes_.empty()) {
      v1::ResultsDownstream out = std::move(outcomes_.front());
      outcomes_.pop_front();
      return out;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return std::nullopt;
    cv_.wait_until(l, std::min(deadline, now + kPollInterval));
  }
}

std::optional<absl::Status> SessionInbox::AwaitFailure(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait_for(l, timeout, [&] { return failure_.has_value(); });
  return failure_;
}

}  // namespace pipeinfer::draft_server
