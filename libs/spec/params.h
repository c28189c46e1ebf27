// Speculation modes and knobs of the controller (docs/architecture.md, section 3), with the
// PipeInfer paper's names and meanings. No gRPC, no engine: the draft service maps its flags and
// the wire's SpecConfig onto these.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pipeinfer::spec {

enum class Mode {
  kPlain,      // no speculation: one next-token run at a time
  kSync,       // standard speculative decoding: draft, one run, wait, verify, repeat
  kPipeInfer,  // asynchronous continuous speculation with early cancellation
};

std::string_view ModeName(Mode mode);
absl::StatusOr<Mode> ParseMode(std::string_view name);

struct SpecParams {
  Mode mode = Mode::kPipeInfer;
  // The most draft tokens in one speculative run (all branches together). 0 = self-tuned: the
  // dynamic token tree sizes every run from its cost model (at most kDynamicNodeCap nodes), and
  // the paper's micro-batches use kPaperDraftMax. Range [0, 64] (a request's override: [1, 64]).
  uint32_t draft_max = 0;
  // Base confidence cutoff: drafting continues while the draft's top-1 probability is >= the
  // effective cutoff p_accept + adjust. Range [0, 1].
  float p_accept = 0.5f;
  // Base split threshold for token trees (an alternative whose draft probability is
  // > p_split + adjust opens a sibling branch). Range [0, 1]. Used when max_branches > 1.
  float p_split = 0.1f;
  // adjust = iter * p_recovery - n_failed * p_decay, where iter counts the micro-batches already
  // launched in the current speculation burst and n_failed the consecutive failed drafting
  // attempts (reset when a verification emits a token). Both in [0, 1].
  float p_recovery = 0.0f;
  float p_decay = 0.0f;
  // The most branches (leaves) of a micro-batch's token tree; 1 = chains. Range [1, 16].
  uint32_t max_branches = 1;
  // The most runs of one request in flight at once, plain and speculative together. 0 = derived
  // from the number of stages (DefaultMaxInflight). Range [0, 256].
  uint32_t max_inflight = 0;
  // Ablations: never cancel (stale runs are computed and their results discarded); draft only
  // right after a verification (one micro-batch per result).
  bool no_cancel = false;
  bool no_continuous = false;
  // The PipeInfer paper's speculation (micro-batches of a main chain with sibling leaves, cut by
  // p_accept/p_split/p_recovery/p_decay) instead of the dynamic token tree, for ablations.
  bool paper_tree = false;
};

// draft_max = 0 under the paper's micro-batches, and the dynamic tree's largest run.
inline constexpr uint32_t kPaperDraftMax = 4;
inline constexpr uint32_t kDynamicNodeCap = 16;
// ... of which a self-tuned pipeinfer run sends at most this many. Its cost model charges a token
// b per stage pass, but runs filled to 16 nodes slowed every pass of a busy pipeline by up to 80 %
// and returned about 1.7 accepted tokens each; capped at 6, the bundled pair decoded 7 % faster
// and the 0.8-agreement oracle 2 % faster (bench/results/speculation-2026-12-07-s2/README.md).
// Sync rounds size themselves by their own rate test and keep kDynamicNodeCap.
inline constexpr uint32_t kDynamicRunCap = 6;
// The draft tokens per run the controller may send at most.
uint32_t EffectiveDraftMax(const SpecParams& params);

// Checks every range above (the ranges of the knob table, spec/knobs.h).
absl::Status Validate(const SpecParams& params);

// The in-flight limit the controller uses when SpecParams::max_inflight is 0: one run per stage
// plus one, so that every stage can hold a run while the next verification is being prepared.
uint32_t DefaultMaxInflight(uint32_t n_stages);

}  // namespace pipeinfer::spec
