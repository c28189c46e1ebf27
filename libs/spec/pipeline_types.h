// What the speculation controller exchanges with the pipeline and the draft model (the types of
// docs/architecture.md, section 3): runs, KV operations, outcomes, stop rules and counters. No
// transport, no engine.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sampling/sampling.h"
#include "spec/params.h"

namespace pipeinfer::spec {

class SharedAcceptance;
class SpecBudget;

struct ForkSpec {
  uint32_t partition = 0;
  uint32_t src_partition = 0;
  uint32_t src_branch = 0;
  uint32_t n_positions = 0;
};

// One run for the pipeline (stage.proto Run without transport fields). `parents` and `branches`
// are empty for a linear chain on branch 0; otherwise one entry per token (parent = run-local
// index or -1 for a root hanging off the partition's prefix).
struct RunSpec {
  bool speculative = false;
  // Work the request needs in any case (a plain run, or a sync run whose first token is committed):
  // stages compute it ahead of speculative runs when a pass is full (stage.proto Run.priority).
  bool verified = false;
  uint32_t partition = 0;  // 0 = canonical (plain runs)
  std::optional<ForkSpec> fork;
  std::vector<int32_t> tokens;
  std::vector<uint32_t> positions;
  std::vector<int32_t> parents;
  std::vector<uint32_t> branches;
  std::vector<uint32_t> result_rows;
  // Token trees grown over several runs: per token, the slot of the partition a root hangs off
  // (-1 = the partition's last slot); empty = every root hangs off the last slot (stage.proto
  // Run.anchors).
  std::vector<int32_t> anchors;
};

// A KV operation sent in-band after the runs already sent.
struct KvOpSpec {
  enum class Kind { kCommit, kRelease };
  Kind kind = Kind::kRelease;
  uint32_t partition = 0;  // kCommit: the source partition
  uint32_t branch = 0;     // kCommit: the branch whose path is adopted
  uint32_t n_positions = 0;
  bool release = false;              // kCommit: also release the partition
  std::vector<uint32_t> partitions;  // kRelease
};

class PipelineSink {
 public:
  virtual ~PipelineSink() = default;
  // Queues a run behind everything sent before; returns its run id (increasing per stream).
  virtual absl::StatusOr<uint64_t> SendRun(const RunSpec& run) = 0;
  virtual absl::Status SendKvOp(const KvOpSpec& op) = 0;
  // Asks the stages to skip these runs (best effort; their outcomes still arrive).
  virtual void Cancel(std::span<const uint64_t> run_ids) = 0;
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  // The draft model's logits (n_vocab values) for the token after `sequence`; valid until the next
  // call. The drafter keeps its own KV and rolls back to the longest common prefix as needed.
  // CANCELLED means the drafter was interrupted (the caller has something more urgent to do): the
  // micro-batch ends there, and drafting goes on later.
  virtual absl::StatusOr<std::span<const float>> NextLogits(std::span<const int32_t> sequence) = 0;
  // The committed tokens grew (they never shrink): a drafter with multibuffered KV adopts the
  // matching part of its speculative buffer into its canonical sequence.
  virtual void Committed(std::span<const int32_t> committed) { (void)committed; }
};

// One result row of the last stage, in the reduction the session asked for.
struct TargetRow {
  enum class Kind { kArgmax, kSparse, kFull };
  Kind kind = Kind::kArgmax;
  int32_t argmax = -1;          // kArgmax
  sampling::SparseDist sparse;  // kSparse: already filtered (temperature/top-k/top-p/min-p)
  std::vector<float> logits;    // kFull: raw logits; the controller applies the sampler
};

// A committed token's log-probability under the target's raw distribution (temperature 1, before
// bias, penalties and filters) and the most likely alternatives at its position.
struct TokenLogprob {
  float logprob = 0.0f;
  std::vector<int32_t> top_ids;  // most likely first, ties to the lower id
  std::vector<float> top_logprobs;
};

struct Outcome {
  uint64_t run_id = 0;
  bool tombstone = false;
  std::string tombstone_reason;  // for messages
  std::vector<TargetRow> rows;
};

struct StopRules {
  std::vector<int32_t> eos_ids;  // ignored when ignore_eos
  std::vector<int32_t> stop_ids;
  bool ignore_eos = false;
  uint32_t max_new_tokens = UINT32_MAX;
  uint32_t max_context = 0;  // positions < max_context; total length never exceeds it
};

enum class Finish { kNone, kStop, kLength };

struct Counters {
  uint64_t runs_plain = 0;
  uint64_t runs_speculative = 0;
  uint64_t runs_invalidated = 0;  // runs built on a rejected token (cancelled unless no_cancel)
  uint64_t runs_cancelled = 0;    // invalidated runs the stages were asked to skip
  uint64_t runs_tombstoned = 0;   // outcomes of invalidated runs that came back as tombstones
  uint64_t tokens_drafted = 0;
  uint64_t tokens_accepted = 0;  // guesses confirmed by verification
  uint64_t sibling_accepts = 0;  // of which were not the main draft token (token trees)
  uint64_t branch_accepts = 0;   // dynamic tree: accepted tokens that continue a sibling branch
  uint64_t verifications = 0;    // outcomes with rows that were verified
  uint64_t draft_failures = 0;   // drafter errors (speculation then stops for the request)
};

struct ControllerOptions {
  SpecParams spec;
  sampling::SamplingParams sampling;
  StopRules stop;
  uint32_t n_stages = 1;
  uint32_t max_run_tokens = 512;  // runs never exceed it
  // Split the prefill into smaller runs when that brings the first token sooner (on an idle,
  // measured pipeline: PrefillRunTokens in controller_common.h).
  bool split_prefill = true;
  // The dynamic token tree's estimates shared by the requests of one draft service (null: the
  // request learns alone), and the pipeline's stage cost fit (null: a default cost model).
  SharedAcceptance* acceptance = nullptr;
  const SpecBudget* costs = nullptr;
  // >= 0: record each generated token's TokenLogprob with this many alternatives (needs FULL
  // result rows). -1: off.
  int32_t logprobs = -1;
};

}  // namespace pipeinfer::spec
