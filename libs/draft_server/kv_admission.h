// KV admission of a draft service (docs/architecture.md section 5): a request starts only when its
// worst case in KV fits on every stage next to the reservations of the requests already running,
// so that a stream that has started never fails for lack of KV. Requests that do not fit wait in a
// bounded FIFO queue until they fit, their deadline passes, or their caller goes away. No gRPC.
//
// The stages report their capacities when the pipeline opens (stage.proto PipelineReady); each
// request's reservation is converted into blocks per stage with the same formula the stages use
// (kv::ReservationBlocks), so the accounting here equals theirs exactly.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "spec/kv_demand.h"

namespace pipeinfer::draft_server {

// One stage's KV capacity.
struct StageKv {
  uint32_t stage_index = 0;
  uint32_t block_tokens = 16;
  uint64_t blocks_total = 0;
};

// What a request asks every stage to reserve (SessionOpen.kv_reserve_tokens / max_partitions).
using KvDemand = spec::KvDemand;

class KvAdmission {
 public:
  using Clock = std::chrono::steady_clock;

  // `max_waiting`: requests that may wait at once (beyond: refused at once).
  explicit KvAdmission(uint32_t max_waiting) : max_waiting_(max_waiting) {}

  // A reservation held by a running request; released when destroyed.
  class Ticket {
   public:
    ~Ticket();
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;

   private:
    friend class KvAdmission;
    Ticket(KvAdmission* owner, uint64_t generation, std::vector<uint64_t> blocks)
        : owner_(owner), generation_(generation), blocks_(std::move(blocks)) {}
    KvAdmission* owner_;
    uint64_t generation_;
    std::vector<uint64_t> blocks_;  // per stage
  };

  // The capacities of a (new) pipeline epoch. Reservations of an older epoch are forgotten: the
  // stages dropped those sessions, and their tickets release nothing.
  void SetStages(std::vector<StageKv> stages);
  bool has_stages() const;

  // Waits until `demand` fits on every stage, then reserves it. OUT_OF_RANGE when it can never fit
  // (it needs more than a stage has: retrying will not help); RESOURCE_EXHAUSTED (with a message
  // naming the stage that is short, its capacity and what is reserved) when too many requests are
  // waiting or `deadline` passes; CANCELLED when `cancelled()` says so (polled every few
  // milliseconds). FIFO: a request never overtakes an earlier one.
  absl::StatusOr<std::unique_ptr<Ticket>> Acquire(const KvDemand& demand,
                                                  Clock::time_point deadline,
                                                  const std::function<bool()>& cancelled);

  // Called with the number of waiting requests each time it changes, while the wait queue's lock
  // is held (keep it cheap: a gauge's Set). Without it a gauge read after Acquire returns never
  // shows a request while it waits.
  void SetWaitingObserver(std::function<void(uint32_t)> observer);

  struct Stats {
    uint32_t waiting = 0;
    double max_reserved_fraction = 0;  // over the stages: reserved blocks / total blocks
  };
  Stats stats() const;

 private:
  struct Waiter {
    std::vector<uint64_t> blocks;
  };
  std::vector<uint64_t> BlocksFor(const KvDemand& d) const;  // with mu_ held
  bool Fits(const std::vector<uint64_t>& blocks) const;      // with mu_ held
  void Release(uint64_t generation, const std::vector<uint64_t>& blocks);

  const uint32_t max_waiting_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<StageKv> stages_;
  std::vector<uint64_t> reserved_;  // per stage
  uint64_t generation_ = 0;
  std::deque<Waiter*> queue_;
  std::function<void(uint32_t)> on_waiting_;
};

}  // namespace pipeinfer::draft_server
