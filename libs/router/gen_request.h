// A generation request after validation, in token space, and what its generation produced. Both
// front ends (OpenAI HTTP and the gRPC Router service) build a GenRequest and read a GenResult.
// Uses the generated protobuf messages (no gRPC); included only by the router's own files.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "pipeinfer/v1/common.pb.h"

namespace pipeinfer::router {

// One generated token's log-probability under the target's raw distribution and the most likely
// alternatives at its position (draft.proto TokenLogprob).
struct TokenLogprobs {
  float logprob = 0.0f;
  std::vector<uint32_t> top_ids;
  std::vector<float> top_logprobs;
};

struct GenRequest {
  std::string request_id;
  std::vector<uint32_t> prompt;
  std::optional<uint32_t> max_tokens;
  v1::SamplingParams sampling;
  std::vector<std::string> stops;  // text stop sequences (client's + template's)
  std::vector<uint32_t> stop_token_ids;
  bool ignore_eos = false;
  v1::SpecConfig spec;
  std::optional<std::chrono::system_clock::time_point> deadline;
  // Set: report log-probabilities with this many alternatives per token (0..20).
  std::optional<uint32_t> logprobs;

  // Bookkeeping for metrics and the access log (request_report.h).
  std::chrono::steady_clock::time_point arrival = std::chrono::steady_clock::now();
  std::string mode = "unknown";  // metrics label: the request's or the default speculation mode
  std::string client;            // the client's address
  std::string user;              // the client's end-user id (OpenAI "user"), for the access log
  std::string replica;           // the draft service replica that served it
  double queue_s = -1;           // waited for a slot (-1: not admitted)
  double ttft_s = -1;            // arrival to first token (-1: none)
};

struct GenResult {
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  std::string stop_sequence;
  v1::SpecCounters spec;
  v1::Timings timings;
};

// Event callbacks of a generation.
struct GenSink {
  // Text and the token ids it came from; index = number of ids delivered before; `logprobs` one
  // per id when the request asked for them (else empty). Returns false when the client is gone.
  std::function<bool(const std::string& text, const std::vector<uint32_t>& ids, uint32_t index,
                     const std::vector<TokenLogprobs>& logprobs)>
      on_delta;
  // Checked between events and at the end; true = the client went away.
  std::function<bool()> cancelled;
};

}  // namespace pipeinfer::router
