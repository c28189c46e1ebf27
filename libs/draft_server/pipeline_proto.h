// The controller's pipeline traffic on the wire (stage.proto), for one session: spec::RunSpec and
// spec::KvOpSpec as StageDownstream messages, the session's result reduction (SessionOpen's
// ResultSpec), and the last stage's outcomes as spec::Outcome. Private to the draft_server
// library (it includes generated message headers).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "pipeinfer/v1/common.pb.h"
#include "pipeinfer/v1/stage.pb.h"
#include "sampling/sampling.h"
#include "spec/controller.h"

namespace pipeinfer::draft_server {

// The reduction the last stage applies to a session's result rows: ARGMAX for greedy decoding
// without bias or penalties, SPARSE (the history-free part of the sampler, top_k candidates) for
// sampling with a top-k bound and neither, FULL logits otherwise (bias and penalties are applied
// by the controller, to the whole row, exactly as to the draft's logits) and whenever
// `logprobs` (the raw distribution's log-probabilities are reported).
v1::ResultSpec ResultSpecFor(const sampling::SamplingParams& params, bool logprobs = false);

// A Run message (the run id is assigned when it is queued, see PipelineLink).
v1::StageDownstream RunMessage(uint64_t session_id, const spec::RunSpec& run);
v1::StageDownstream KvOpMessage(uint64_t session_id, const spec::KvOpSpec& op);

// A RunResult or Tombstone in the controller's terms. INTERNAL for a malformed row (a FULL row
// must hold n_vocab logits).
absl::Status ToOutcome(const v1::ResultsDownstream& m, uint32_t n_vocab, spec::Outcome* out);

// A stage's ErrorDetail as a status: its code (INTERNAL for OK) and "origin: message".
absl::Status StatusFromDetail(const v1::ErrorDetail& e);

}  // namespace pipeinfer::draft_server
