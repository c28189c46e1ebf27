#include "draft_server/request_validation.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "draft_server/spec_proto.h"

namespace pipeinfer::draft_server {
namespace {

absl::Status CheckIds(const v1::GenerateRequest& req, const ServedPipeline& p) {
  if (req.request_id().empty()) return absl::InvalidArgumentError("request_id is required");
  if (req.request_id().size() > 128) {
    return absl::InvalidArgumentError("request_id is longer than 128 characters");
  }
  for (unsigned char c : req.request_id()) {
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError("request_id must be printable ASCII");
    }
  }
  if (!req.model().empty() && req.model() != p.model_id) {
    return absl::NotFoundError(absl::StrCat("model '", req.model(),
                                            "' is not served here (this draft service serves '",
                                            p.model_id, "')"));
  }
  if (req.prompt_token_ids().empty()) {
    return absl::InvalidArgumentError("prompt_token_ids must not be empty");
  }
  for (int i = 0; i < req.prompt_token_ids_size(); ++i) {
    if (req.prompt_token_ids(i) >= p.n_vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt_token_ids[", i, "] = ", req.prompt_token_ids(i),
                       " is not a valid token id (n_vocab is ", p.n_vocab, ")"));
    }
  }
  for (int i = 0; i < req.stop_token_ids_size(); ++i) {
    if (req.stop_token_ids(i) >= p.n_vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop_token_ids[", i, "] = ", req.stop_token_ids(i),
                       " is not a valid token id (n_vocab is ", p.n_vocab, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> MaxContext(const v1::GenerateRequest& req, uint32_t n_ctx) {
  const uint64_t prompt_len = static_cast<uint64_t>(req.prompt_token_ids_size());
  if (prompt_len >= n_ctx) {
    return absl::OutOfRangeError(absl::StrCat("the prompt has ", prompt_len,
                                              " tokens but must be shorter than the context "
                                              "window of ",
                                              n_ctx, " tokens"));
  }
  if (!req.has_max_tokens()) return n_ctx;
  if (req.max_tokens() == 0) return absl::InvalidArgumentError("max_tokens must be >= 1");
  if (prompt_len + req.max_tokens() > n_ctx) {
    return absl::OutOfRangeError(
        absl::StrCat("the prompt (", prompt_len, " tokens) plus max_tokens (", req.max_tokens(),
                     ") exceeds the context window of ", n_ctx, " tokens"));
  }
  return static_cast<uint32_t>(prompt_len + req.max_tokens());
}

absl::StatusOr<sampling::SamplingParams> Sampling(const v1::SamplingParams& sp, uint32_t n_vocab) {
  sampling::SamplingParams p;
  if (sp.has_temperature()) {
    if (!std::isfinite(sp.temperature())) {
      return absl::InvalidArgumentError("temperature must be finite");
    }
    p.temperature = std::max(0.0f, sp.temperature());  // <= 0 means greedy
  }
  if (sp.has_top_k()) p.top_k = sp.top_k();
  if (sp.has_top_p()) p.top_p = sp.top_p();
  if (sp.has_min_p()) p.min_p = sp.min_p();
  if (sp.has_repetition_penalty()) p.repetition_penalty = sp.repetition_penalty();
  if (sp.has_repeat_last_n()) p.repeat_last_n = sp.repeat_last_n();
  if (sp.has_frequency_penalty()) p.frequency_penalty = sp.frequency_penalty();
  if (sp.has_presence_penalty()) p.presence_penalty = sp.presence_penalty();
  for (const auto& [id, bias] : sp.logit_bias()) {
    if (id >= n_vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          "logit_bias: token id ", id, " is not a valid token id (n_vocab is ", n_vocab, ")"));
    }
    p.logit_bias.emplace_back(static_cast<int32_t>(id), bias);
  }
  // The map's order is unspecified: sort for a deterministic application order.
  std::sort(p.logit_bias.begin(), p.logit_bias.end());
  if (absl::Status v = sampling::Validate(p); !v.ok()) {
    return absl::InvalidArgumentError(v.message());
  }
  if (sp.has_seed()) {
    p.seed = sp.seed();
  } else {
    std::random_device rd;
    p.seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  return p;
}

}  // namespace

absl::StatusOr<ValidatedRequest> ValidateRequest(const v1::GenerateRequest& req,
                                                 const ServedPipeline& pipeline,
                                                 const spec::SpecParams& spec_defaults,
                                                 bool has_draft_model) {
  if (absl::Status st = CheckIds(req, pipeline); !st.ok()) return st;
  ValidatedRequest v;
  absl::StatusOr<uint32_t> max_context = MaxContext(req, pipeline.n_ctx);
  if (!max_context.ok()) return max_context.status();
  v.max_context = *max_context;

  absl::StatusOr<spec::SpecParams> spec = FromSpecConfig(req.spec(), spec_defaults);
  if (!spec.ok()) return spec.status();
  if (spec->mode != spec::Mode::kPlain && !has_draft_model) {
    return absl::FailedPreconditionError(
        absl::StrCat("speculation mode ", std::string(spec::ModeName(spec->mode)),
                     " needs a draft model, and this draft service has none (start it with "
                     "--draft-model); use mode plain"));
  }
  v.spec = *spec;

  absl::StatusOr<sampling::SamplingParams> sampling = Sampling(req.sampling(), pipeline.n_vocab);
  if (!sampling.ok()) return sampling.status();
  v.sampling = *sampling;
  if (req.has_logprobs()) {
    if (req.logprobs() > 20) {
      return absl::InvalidArgumentError(
          absl::StrCat("logprobs must be in [0, 20], got ", req.logprobs()));
    }
    v.logprobs = static_cast<int32_t>(req.logprobs());
  }
  return v;
}

KvDemand KvDemandOf(const ValidatedRequest& request, uint32_t n_stages) {
  return spec::KvDemandOf(request.spec, request.max_context, n_stages);
}

}  // namespace pipeinfer::draft_server
