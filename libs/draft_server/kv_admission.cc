#include "draft_server/kv_admission.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kv/kv_cache.h"

namespace pipeinfer::draft_server {

KvAdmission::Ticket::~Ticket() { owner_->Release(generation_, blocks_); }

void KvAdmission::SetStages(std::vector<StageKv> stages) {
  {
    std::lock_guard<std::mutex> l(mu_);
    stages_ = std::move(stages);
    reserved_.assign(stages_.size(), 0);
    ++generation_;
  }
  cv_.notify_all();
}

void KvAdmission::SetWaitingObserver(std::function<void(uint32_t)> observer) {
  std::lock_guard<std::mutex> l(mu_);
  on_waiting_ = std::move(observer);
}

bool KvAdmission::has_stages() const {
  std::lock_guard<std::mutex> l(mu_);
  return !stages_.empty();
}

std::vector<uint64_t> KvAdmission::BlocksFor(const KvDemand& d) const {
  std::vector<uint64_t> blocks(stages_.size());
  for (size_t i = 0; i < stages_.size(); ++i) {
    blocks[i] = static_cast<uint64_t>(kv::ReservationBlocks(
        d.reserve_tokens, d.partitions, static_cast<int32_t>(stages_[i].block_tokens)));
  }
  return blocks;
}

bool KvAdmission::Fits(const std::vector<uint64_t>& blocks) const {
  for (size_t i = 0; i < stages_.size(); ++i) {
    if (reserved_[i] + blocks[i] > stages_[i].blocks_total) return false;
  }
  return true;
}

void KvAdmission::Release(uint64_t generation, const std::vector<uint64_t>& blocks) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (generation != generation_) return;
    for (size_t i = 0; i < blocks.size() && i < reserved_.size(); ++i) reserved_[i] -= blocks[i];
  }
  cv_.notify_all();
}

absl::StatusOr<std::unique_ptr<KvAdmission::Ticket>> KvAdmission::Acquire(
    const KvDemand& demand, Clock::time_point deadline, const std::function<bool()>& cancelled) {
  std::unique_lock<std::mutex> l(mu_);
  if (stages_.empty()) {
    // No capacity report (an older stage): nothing to account against.
    return std::unique_ptr<Ticket>(new Ticket(this, generation_, {}));
  }
  Waiter w{BlocksFor(demand)};
  for (size_t i = 0; i < stages_.size(); ++i) {
    if (w.blocks[i] > stages_[i].blocks_total) {
      return absl::OutOfRangeError(absl::StrCat(
          "the request needs ", w.blocks[i], " KV blocks on stage ", stages_[i].stage_index, " (",
          demand.reserve_tokens, " token slots incl. speculation headroom), more than the ",
          stages_[i].blocks_total, " it has: it can never be served; lower max_tokens or ask for ",
          "a shorter prompt"));
    }
  }
  if (queue_.empty() && Fits(w.blocks)) {
    for (size_t i = 0; i < stages_.size(); ++i) reserved_[i] += w.blocks[i];
    return std::unique_ptr<Ticket>(new Ticket(this, generation_, std::move(w.blocks)));
  }
  if (queue_.size() >= max_waiting_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the KV cache is fully reserved and ", queue_.size(), " requests already wait for it"));
  }
  queue_.push_back(&w);
  if (on_waiting_) on_waiting_(static_cast<uint32_t>(queue_.size()));
  uint64_t generation = generation_;
  absl::Status why;
  while (true) {
    if (generation != generation_) {  // a new epoch: capacities may have changed
      generation = generation_;
      w.blocks = BlocksFor(demand);
      bool never = false;
      for (size_t i = 0; i < stages_.size(); ++i) never |= w.blocks[i] > stages_[i].blocks_total;
      if (never) {
        why = absl::OutOfRangeError(
            "the request needs more KV than a stage of the (reconnected) pipeline has");
        break;
      }
    }
    if (queue_.front() == &w && Fits(w.blocks)) {
      for (size_t i = 0; i < stages_.size(); ++i) reserved_[i] += w.blocks[i];
      queue_.pop_front();
      if (on_waiting_) on_waiting_(static_cast<uint32_t>(queue_.size()));
      cv_.notify_all();  // the next waiter may fit too
      return std::unique_ptr<Ticket>(new Ticket(this, generation_, std::move(w.blocks)));
    }
    if (cancelled && cancelled()) {
      why = absl::CancelledError("the caller went away while waiting for KV");
      break;
    }
    if (Clock::now() >= deadline) {
      size_t short_stage = 0;
      for (size_t i = 0; i < stages_.size(); ++i) {
        if (reserved_[i] + w.blocks[i] > stages_[i].blocks_total) short_stage = i;
      }
      why = absl::ResourceExhaustedError(
          absl::StrCat("the KV cache is fully reserved: the request needs ", w.blocks[short_stage],
                       " blocks on stage ", stages_[short_stage].stage_index, ", which has ",
                       stages_[short_stage].blocks_total - reserved_[short_stage], " of ",
                       stages_[short_stage].blocks_total, " unreserved; retry later"));
      break;
    }
    cv_.wait_until(l, std::min(deadline, Clock::now() + std::chrono::milliseconds(20)));
  }
  queue_.erase(std::find(queue_.begin(), queue_.end(), &w));
  if (on_waiting_) on_waiting_(static_cast<uint32_t>(queue_.size()));
  cv_.notify_all();
  return why;
}

KvAdmission::Stats KvAdmission::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  Stats s;
  s.waiting = static_cast<uint32_t>(queue_.size());
  for (size_t i = 0; i < stages_.size(); ++i) {
    if (stages_[i].blocks_total > 0) {
      s.max_reserved_fraction =
          std::max(s.max_reserved_fraction, static_cast<double>(reserved_[i]) /
                                                static_cast<double>(stages_[i].blocks_total));
    }
  }
  return s;
}

}  // namespace pipeinfer::draft_server
