// The speculation controller of one request (docs/architecture.md, section 3): transport-free and
// engine-free. It decides which runs and KV operations go into the pipeline, verifies results,
// commits accepted tokens and cancels runs built on rejected ones. The caller (the draft service)
// gives it a PipelineSink to send through, a Drafter for draft-model logits, and feeds it the
// pipeline's outcomes in the order they arrive (which is the order the runs were sent).
//
// Model of the request. C = committed tokens (prompt, then generated). A = C followed by guesses:
// draft tokens at positions >= |C| that in-flight runs assume. F = the fed frontier: positions
// < F are (or will be, in stream order) in the KV cache of the tip of the run chain. Every run
// writes a contiguous range [s, e) of A, the next run starts at e, and a run's rows predict the
// tokens after its positions. A guess at position x is verified by the row that predicts x (a row
// of the run that fed x - 1): greedy = exact match, sampling = rejection sampling against the
// target's filtered distribution (sampling/speculative.h), which keeps the output distributed
// exactly as the target's. The first rejection commits the target's token instead, invalidates
// every later run (cancelled, partitions released) and the next plain run feeds the correction.
//
// Modes: plain (one plain run at a time), sync (draft a chain, send [last committed token,
// drafts...] as one run, wait, verify, repeat), pipeinfer (after each result a plain run for the
// newest committed token unless a valid in-flight run covers it; Speculate() launches draft
// micro-batches on top of the newest guess, each in a fresh partition forked from the tip, while
// runs in flight < max_inflight and the draft's confidence >= p_accept + adjust).
//
// Token trees (max_branches > 1): while drafting a micro-batch's main chain, an alternative whose
// draft probability is > p_split + adjust becomes a sibling leaf of the main token (a branch of its
// own, one token long), up to max_branches branches per micro-batch. For a sampled request the
// number of siblings is decided from q alone and the siblings are drawn from q without
// replacement, as the multi-candidate rejection sampling requires. Verification walks the tree
// along the accepted path; later micro-batches extend the main chain, so accepting a sibling
// invalidates them. The assumed tokens therefore form a tree of nodes (nodes_): the committed line
// ends at line_ (the node of the newest committed token when it has been fed), and the tip_, where
// the next micro-batch attaches, is reached from line_ through first children.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sampling/sampling.h"
#include "spec/params.h"
#include "spec/pipeline_types.h"
#include "spec/tree_controller.h"

namespace pipeinfer::spec {

class Controller {
 public:
  // `drafter` may be null (then every mode behaves as plain). Both pointers must outlive this.
  Controller(ControllerOptions options, PipelineSink* sink, Drafter* drafter);

  // Sends the prefill (plain runs of at most max_run_tokens tokens).
  absl::Status Start(std::span<const int32_t> prompt);
  // Handles the next outcome of this request (outcomes arrive in sending order). Verifies,
  // commits, cancels invalidated runs and launches the next plain (or sync) run.
  absl::Status OnOutcome(const Outcome& outcome);
  // pipeinfer: launches speculative runs while the pipeline has room and `result_waiting()` is
  // false (it is also asked between draft passes, and a run is then launched as far as it got).
  // Returns how many were launched. The dynamic tree in sync mode only drafts ahead (after the
  // prompt, while the prefill is in flight) and launches nothing.
  absl::StatusOr<int> Speculate(const std::function<bool()>& result_waiting);
  // When Speculate held a run back until stage 0 needs it (the dynamic tree's pacing), the time
  // to call it again if no outcome arrives first; nullopt: call it after the next outcome.
  std::optional<std::chrono::steady_clock::time_point> WakeAt() const;

  bool finished() const;
  Finish finish_reason() const;
  // Generated tokens committed since the previous call, in order (the stop token included).
  std::vector<int32_t> TakeEmitted();
  // With options.logprobs >= 0: the log-probabilities of the tokens TakeEmitted returned, in the
  // same order (take both together); empty otherwise.
  std::vector<TokenLogprob> TakeLogprobs();
  const std::vector<int32_t>& committed() const;
  uint32_t prompt_length() const;
  uint32_t generated() const { return static_cast<uint32_t>(committed().size()) - prompt_length(); }
  // Run ids whose outcome has not been handled yet, valid or invalidated (for closing).
  std::vector<uint64_t> OutstandingRunIds() const;
  // The run was invalidated: its outcome, still to come, changes nothing but counters.
  bool Dropped(uint64_t run_id) const;
  const Counters& counters() const;
  Mode mode() const { return mode_; }
  uint32_t max_inflight() const { return max_inflight_; }
  // Live non-canonical partitions right now (for tests: nothing leaks at the end).
  size_t live_partitions() const;
  size_t runs_in_flight() const;

 private:
  struct Node {
    int32_t token = -1;
    uint32_t pos = 0;
    uint64_t run = 0;               // the run that feeds it (its K/V and its result row)
    int32_t row = -1;               // its row in that run's result
    uint32_t branch = 0;            // its branch label in that run
    int32_t parent = -1;            // node id
    bool dead = false;              // its run was invalidated
    std::vector<int32_t> children;  // node ids; the main child first
    sampling::SparseDist child_q;   // sampling: the draft distribution the children were drawn from
  };
  struct InFlight {
    uint64_t id = 0;
    bool speculative = false;
    uint32_t partition = 0;
    uint32_t start = 0;          // position of its first (root) token
    std::vector<int32_t> nodes;  // its nodes, row order
    size_t rows = 0;             // result rows expected
    int32_t deepest = -1;        // its deepest committed node
  };
  // A drafted micro-batch before launch: tokens in run order with run-local parents (-1 = the
  // attach node) and branch labels; child_q for each token that received children.
  struct Draft {
    std::vector<int32_t> tokens;
    std::vector<int32_t> parents;
    std::vector<uint32_t> branches;
    std::vector<sampling::SparseDist> child_q;  // per token (empty when no children drafted)
    sampling::SparseDist root_q;                // distribution of the roots
    size_t main_len = 0;
    bool interrupted = false;  // ended early for a waiting result (not a failed attempt)
  };

  bool greedy() const { return options_.sampling.temperature <= 0.0f; }
  float Adjust(uint32_t iter) const;
  absl::Status SendPlain();
  absl::Status SendSync();
  // Drafts a micro-batch after the assumed sequence `context` (main chain with sibling leaves),
  // at most `budget` tokens, with the given confidence cutoff and split threshold. When `stop` is
  // given and says so after a token, the micro-batch ends there (a result is waiting: handling it
  // must not wait for the rest of the draft).
  Draft DraftTree(std::vector<int32_t> context, float cutoff, float split, uint32_t budget,
                  uint32_t max_branches, const std::function<bool()>& stop = nullptr);
  // Sends `run` (tokens already filled in) and records its nodes: `lead` is the node id of a
  // leading committed token already created (sync runs) or -1; the draft's roots hang off
  // `attach`.
  absl::Status LaunchTree(RunSpec run, const Draft& d, int32_t attach, int32_t lead);
  int32_t NewNode(int32_t token, uint32_t pos, int32_t parent, uint32_t branch);
  // Appends a committed token (the node that carried it, or -1) and applies the stop rules.
  void CommitToken(int32_t token, int32_t node);
  // Drops every in-flight run that no longer descends from line_.
  absl::Status InvalidateStale();
  void RecomputeTip();
  uint32_t AllocPartition();
  void FreePartition(uint32_t p);
  // C followed by the tokens from line_ to tip_ (the assumed sequence the tip extends).
  std::vector<int32_t> Assumed() const;

  ControllerOptions options_;
  // The dynamic token tree (tree_controller.h), which handles the request unless the mode is plain
  // or paper_tree is set; everything below is the paper's algorithm.
  std::unique_ptr<TreeController> tree_;
  PipelineSink* sink_;
  Drafter* drafter_;
  Mode mode_;
  uint32_t max_inflight_ = 2;
  sampling::Sampler sampler_;

  std::vector<int32_t> committed_;
  std::vector<Node> nodes_;
  int32_t line_ = -1;  // node of the newest committed token, if it has been fed
  int32_t tip_ = -1;   // where the next micro-batch attaches (-1: a plain run is due)
  uint32_t prompt_len_ = 0;
  uint32_t limit_ = 0;                  // no token at a position >= limit_ is ever needed
  size_t emitted_ = 0;                  // committed_ index up to which TakeEmitted has returned
  std::vector<TokenLogprob> logprobs_;  // not taken yet
  Finish finish_ = Finish::kNone;

  std::deque<InFlight> ledger_;  // valid runs in flight, in sending order
  std::set<uint64_t> dropped_;   // invalidated runs whose outcome is still to come
  std::set<uint32_t> live_partitions_;
  std::set<uint32_t> free_partitions_;
  uint32_t next_partition_ = 1;

  uint32_t n_failed_ = 0;   // consecutive failed drafting attempts
  uint32_t allowance_ = 0;  // no_continuous: micro-batches still allowed before the next result
  bool drafting_broken_ = false;
  Counters counters_;
};

}  // namespace pipeinfer::spec
