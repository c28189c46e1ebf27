// Checking a Generate request against what the pipeline serves, and resolving its sampling and
// speculation settings. Private to the draft_server library.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "draft_server/kv_admission.h"
#include "pipeinfer/v1/draft.pb.h"
#include "sampling/sampling.h"
#include "spec/params.h"

namespace pipeinfer::draft_server {

// What the pipeline serves, learned from stage 0 and the last stage at startup.
struct ServedPipeline {
  std::string model_id;
  uint32_t n_stages = 0;
  uint32_t n_vocab = 0;
  uint32_t n_ctx = 0;           // the smaller of the two stages' windows
  uint32_t max_run_tokens = 1;  // the most tokens one run may carry (prefill chunks)
  std::vector<uint32_t> eos_ids;
};

struct ValidatedRequest {
  sampling::SamplingParams sampling;  // with a seed (drawn when the request has none)
  spec::SpecParams spec;              // SpecConfig over the service defaults
  uint32_t max_context = 0;           // prompt + max_tokens, or n_ctx without max_tokens
  int32_t logprobs = -1;              // GenerateRequest.logprobs, -1 when unset
};

// INVALID_ARGUMENT, NOT_FOUND (another model), OUT_OF_RANGE (context) or FAILED_PRECONDITION (a
// speculative mode without a draft model), each with a readable message.
absl::StatusOr<ValidatedRequest> ValidateRequest(const v1::GenerateRequest& req,
                                                 const ServedPipeline& pipeline,
                                                 const spec::SpecParams& spec_defaults,
                                                 bool has_draft_model);

// The request's worst case in KV (spec/kv_demand.h).
KvDemand KvDemandOf(const ValidatedRequest& request, uint32_t n_stages);

}  // namespace pipeinfer::draft_server
