#include "router/http_reply.h"

#include <httplib.h>

#include <nlohmann/json.hpp>

namespace pipeinfer::router {

void SendError(Core& core, httplib::Response& res, const std::string& endpoint, const Error& e) {
  const int status = HttpStatusFor(e);
  res.status = status;
  if (status == 429) res.set_header("Retry-After", std::to_string(core.options.retry_after_s));
  res.set_content(Dump(ErrorBody(e)), "application/json");
  core.metrics->CountRequest(endpoint, status);
  if (e.code == absl::StatusCode::kCancelled) core.metrics->CountCancelled(endpoint);
}

}  // namespace pipeinfer::router
