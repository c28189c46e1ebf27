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

struct GenRequest {
  std::string request_id;
  std::vector<uint32_t> prompt;
  std::optional<uint32_t> max_tokens;
  bool clamp_max_tokens = false;  // gRPC: clamp to the context; HTTP: error
  v1::SamplingParams sampling;
  std::vector<std::string> stops;  // text stop sequences (client's + template's)
  std::vector<uint32_t> stop_token_ids;
  bool ignore_eos = false;
  v1::SpecConfig spec;
  std::optional<std::chrono::system_clock::time_point> deadline;

  // Bookkeeping for metrics and the access log (request_report.h).
  std::chrono::steady_clock::time_point arrival = std::chrono::steady_clock::now();
  std::string mode = "unknown";  // metrics label: the request's or the default speculation mode
  std::string client;            // the client's address
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
  // Text and the token ids it came from; index = number of ids delivered before. Returns false
  // when the client is gone.
  std::function<bool(const std::string& text, const std::vector<uint32_t>& ids, uint32_t index)>
      on_delta;
  // Checked between events and at the end; true = the client went away.
  std::function<bool()> cancelled;
};

}  // namespace pipeinfer::router
