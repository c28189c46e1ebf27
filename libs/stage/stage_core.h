// The transport-independent heart of a stage server: applies the ordered downstream messages of a
// pipeline link (sessions, runs, KV operations, tombstones, barriers) to this stage's engine and KV
// cache, and produces what goes on: messages for the next stage, or run outcomes for the
// controller on the last stage, plus session errors for the upstream direction.
//
// Semantics follow proto/pipeinfer/v1/stage.proto: arrival order per session, cancelled runs become
// tombstones (checked at dequeue and between layers), skipped runs still do their KV bookkeeping
// with "poisoned" positions, and runs that would read poison are skipped as DEPENDENCY tombstones
// identically on every stage. The gRPC service (streams, credits, cancel forwarding) wraps this.
//
// Continuous batching (Step): the queued runs of different sessions are computed in one forward
// pass, at most one run per session, at most max_batch_tokens tokens (the oldest run always goes,
// then verified runs, then speculative ones). Messages of a session stay in arrival order; a
// session whose run is in the batch waits for the next pass with everything it has queued behind
// that run. Non-run messages of other sessions are applied in their place while the batch is
// assembled, and every output leaves in the order the messages were taken.
#pragma once

#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
}  // namespace prometheus

namespace pipeinfer::metrics {
class Metrics;
}  // namespace pipeinfer::metrics

namespace pipeinfer::v1 {
class StageDownstream;
class ResultsDownstream;
class ErrorDetail;
class StageInfo;
class ResultSpec;
class StageTiming;
}  // namespace pipeinfer::v1

namespace pipeinfer::stage {

struct StageCoreConfig {
  uint32_t stage_index = 0;
  uint32_t n_stages = 1;
  std::string model_id;
  uint32_t max_run_tokens = 512;
  // The most tokens one forward pass computes over all of its runs (a larger single run still
  // runs alone).
  uint32_t max_batch_tokens = 512;
  uint32_t max_sparse_candidates = 256;  // SPARSE rows: cap when the spec gives no bound
  int hidden_dtype_out = 1;              // v1::DType of hidden states sent downstream (F32)
  // Compute padding, to emulate a bigger model's timing on a small machine (benchmarks only):
  // every forward pass takes at least emulate_run_us + emulate_token_us * (tokens of all the runs
  // in the pass), which is how a memory-bound big model behaves. The stage sleeps the remainder
  // after computing (sleeping stages leave the CPU to the others, as separate machines would) and
  // a run cancelled meanwhile stops like one cancelled between layers. 0 = off. The tokens are
  // always really computed.
  uint32_t emulate_run_us = 0;
  uint32_t emulate_token_us = 0;
};

// A snapshot of the stage's counters (read from its metrics registry, the one source of truth).
struct StageCounters {
  uint64_t runs_computed = 0;
  uint64_t runs_skipped = 0;     // cancelled before compute (tombstoned at dequeue)
  uint64_t runs_stopped = 0;     // cancelled between layers
  uint64_t runs_dependency = 0;  // skipped because they would read poisoned positions
  uint64_t tombstones_forwarded = 0;
  uint64_t tokens_computed = 0;
  uint64_t session_errors = 0;
  uint64_t compute_us = 0;
  uint64_t forward_passes = 0;  // batches computed (each holds one or more runs)
};

// A message in a stage's input queue, with the time it arrived (for StageTiming.queue_us).
struct QueuedMessage {
  std::unique_ptr<v1::StageDownstream> msg;
  std::chrono::steady_clock::time_point arrival;
};

// What handling one message produced, in order.
struct StageOutput {
  std::vector<std::unique_ptr<v1::StageDownstream>> forward;    // to the next stage
  std::vector<std::unique_ptr<v1::ResultsDownstream>> results;  // last stage: to the controller
  std::vector<std::unique_ptr<v1::ErrorDetail>> errors;         // upstream
  StageOutput();
  ~StageOutput();
  StageOutput(StageOutput&&) noexcept;
  StageOutput& operator=(StageOutput&&) noexcept;
};

class StageCore {
 public:
  // `metrics`: the registry of the stage process (null: a private one, named "stage<index>").
  // Counters, the forward-time histogram and the KV gauges are registered there as
  // pipeinfer_stage_*.
  StageCore(std::unique_ptr<engine::Engine> engine, StageCoreConfig config,
            std::shared_ptr<metrics::Metrics> metrics = nullptr);
  ~StageCore();

  // Applies one message (never PipelineOpen) in order. Session-level problems become ErrorDetails
  // in the output; the call itself never fails.
  StageOutput Handle(const v1::StageDownstream& msg);

  // Takes what it can from the front of `queue` for one forward pass (see the file comment):
  // applies the non-run messages it meets, computes the runs it chose together, and returns every
  // output in the order the messages were taken. What it leaves stays in `queue`, in order. It
  // takes at least one message when the queue is not empty. `taken` (optional) receives how many.
  StageOutput Step(std::deque<QueuedMessage>& queue, size_t* taken = nullptr);

  // Records cancelled run ids (thread-safe; a run being computed stops at its next layer).
  void Cancel(const std::vector<uint64_t>& run_ids);
  bool IsCancelled(uint64_t run_id) const;

  // Drops every session (new epoch or link loss).
  void Reset();

  StageCounters counters() const;
  // The rows computed in each layer of the latest forward pass (diagnostics and tests: a run
  // cancelled mid-pass leaves the batch, so the count shrinks).
  const engine::BatchStats& last_batch() const { return last_batch_; }
  const std::shared_ptr<metrics::Metrics>& metrics() const { return metrics_; }
  void FillInfo(v1::StageInfo* info) const;
  engine::Engine& engine() { return *engine_; }
  const StageCoreConfig& config() const { return config_; }

 private:
  static constexpr int32_t kAllValid = INT32_MAX;

  struct Partition {
    int32_t prefix_len = 0;
    int32_t valid_len = 0;  // positions [0, valid_len) of every path hold real keys/values
    bool written = false;
    std::map<uint32_t, int32_t> branch_leaf;  // branch label -> last slot with that label
    // A token tree grown over several runs (Run.anchors): poison is kept per slot instead.
    bool tree = false;
    std::vector<uint8_t> poisoned;  // tree: per slot of the sequence (1 = no real keys/values)
  };
  struct Session {
    uint32_t max_context = 0;
    uint32_t max_partitions = 0;  // 0 = no bound (a session without a reservation)
    bool reserved = false;        // opened with a KV reservation
    std::string request_id;
    int result_kind = 1;
    uint32_t max_candidates = 0;
    std::shared_ptr<const v1::ResultSpec> result;  // the session's default reduction
    bool failed = false;
    uint64_t last_run_id = 0;  // run ids increase per session within an epoch (stage.proto)
    int32_t canonical_valid = 0;
    std::map<uint32_t, Partition> parts;
  };

  struct PendingRun;  // a run admitted to the forward pass being assembled

  // A message that is not a run (session open/close, KV operation, tombstone, barrier).
  StageOutput HandleMessage(const v1::StageDownstream& msg);
  // kv_blocks_in_use, kv_blocks_capacity, sessions_open from the KV cache.
  void UpdateKvGauges();
  // Checks a run and does its bookkeeping up to the compute: either it gets an outcome at once
  // (a tombstone, a session failure: false) or its KV slots are appended and it joins `batch`
  // (true, `p` filled).
  bool PrepareRun(const v1::StageDownstream& msg, engine::Engine::Batch& batch, PendingRun& p,
                  StageOutput& out);
  // The run's bookkeeping and outputs after the forward pass.
  void FinishRun(PendingRun& p, engine::ForwardOutput& res, const v1::StageTiming& timing,
                 StageOutput& out);
  void HandleTombstone(const v1::StageDownstream& msg, StageOutput& out);
  void HandleKvOp(const v1::StageDownstream& msg, StageOutput& out);
  // Forks partition `part` (KV + bookkeeping). Fails the session on error.
  absl::Status ApplyFork(uint64_t sid, Session& s, uint32_t part, uint32_t src, uint32_t src_branch,
                         uint32_t n_positions);
  // Bookkeeping of a run that is not computed: positions become poisoned. A run with anchors
  // (a token tree, `parents`/`anchors` non-empty) appends its slots, poisoned.
  absl::Status PoisonRun(uint64_t sid, Session& s, int kind, uint32_t part, uint32_t n_tokens,
                         std::span<const int32_t> parents = {},
                         std::span<const int32_t> anchors = {});
  // A tree partition's path ending at `leaf`, cut to `n_positions`: OK when no slot of it is
  // poisoned.
  static absl::Status CheckTreePath(const Partition& p, const kv::Sequence& seq, uint32_t part,
                                    int32_t leaf, int32_t n_positions);
  // Turns a partition into a tree partition (per-slot poison) before a run with anchors writes it.
  static void MakeTree(Partition& p, int32_t seq_size);
  void FailSession(uint64_t sid, Session* s, absl::Status status, uint64_t run_id,
                   StageOutput& out);
  // `partial`: this stage's pass of a run it stopped between layers (added to the trace).
  void EmitTombstone(const v1::StageDownstream& original_run, int reason, StageOutput& out,
                     const v1::StageTiming* partial = nullptr);
  void Forward(const v1::StageDownstream& msg, StageOutput& out);
  // The run left this stage (computed or tombstoned): its cancel mark is no longer needed.
  void ForgetCancelled(uint64_t run_id);

  std::unique_ptr<engine::Engine> engine_;
  StageCoreConfig config_;
  std::map<uint64_t, Session> sessions_;
  engine::BatchStats last_batch_;
  mutable std::mutex cancel_mu_;
  std::condition_variable cancel_cv_;  // notified by Cancel (the emulation padding waits on it)
  std::set<uint64_t> cancelled_;
  std::shared_ptr<metrics::Metrics> metrics_;
  struct Instruments {
    prometheus::Counter *runs_computed, *runs_skipped, *runs_stopped, *runs_dependency,
        *tombstones_forwarded, *tokens_computed, *session_errors, *compute_seconds, *forward_passes,
        *kv_overruns;
    prometheus::Histogram *forward_seconds, *batch_runs, *batch_tokens;
    prometheus::Gauge *kv_blocks_in_use, *kv_blocks_capacity, *kv_blocks_reserved, *sessions_open;
  } m_{};
};

}  // namespace pipeinfer::stage
