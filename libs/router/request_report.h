// The end of one generation request, as metrics and the access log see it: the request count by
// front end and status, pipeinfer_request_success_total and the end-to-end latency of finished
// requests, and one access-log line (id, model, mode, status, tokens, TTFT, e2e, client, the
// client's end user (OpenAI "user"), replica).
#pragma once

#include <chrono>
#include <string>

#include "pipeinfer/v1/common.pb.h"
#include "router/gen_request.h"

namespace pipeinfer::router {

class RouterMetrics;

struct RequestEnd {
  std::string endpoint;  // HTTP path, or the gRPC method ("Chat", "Complete")
  bool grpc = false;
  int code = 0;  // HTTP status, or gRPC status code
  // Finished (stop / length) or abandoned (the client went away: abort); null for an error.
  const GenResult* result = nullptr;
  bool aborted = false;
};

// The mode label of a request: its SpecConfig mode, else `default_mode` (the draft service's).
std::string ModeLabel(const v1::SpecConfig& spec, const std::string& default_mode);

// The request got its generation slot after waiting since `queued_at`: queue time and prompt
// tokens.
void Admitted(RouterMetrics& metrics, GenRequest* g,
              std::chrono::steady_clock::time_point queued_at);

// Counts and logs the end of `g` (which may be a request refused before it was parsed).
void ReportRequest(RouterMetrics& metrics, const GenRequest& g, const RequestEnd& end);

}  // namespace pipeinfer::router
