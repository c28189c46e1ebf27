#include "router/http_reply.h"

#include <httplib.h>

#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include "log/log.h"
#include "router/request_report.h"

namespace pipeinfer::router {

void SendError(Core& core, httplib::Response& res, const std::string& endpoint, const Error& e,
               const GenRequest* g) {
  const int status = HttpStatusFor(e);
  res.status = status;
  // Both are retryable: a full queue (429) and no pipeline / no draft service (503).
  if (status == 429 || status == 503) {
    res.set_header("Retry-After", std::to_string(core.options.retry_after_s));
  }
  res.set_content(Dump(ErrorBody(e)), "application/json");
  const GenRequest unparsed;
  const GenRequest& req = g ? *g : unparsed;
  if (!req.request_id.empty()) res.set_header("X-Request-Id", req.request_id);
  RequestEnd end;
  end.endpoint = endpoint;
  end.code = status;
  end.aborted = e.code == absl::StatusCode::kCancelled;
  if (!end.aborted && status >= 500) {
    const log::RequestScope scope(req.request_id);
    spdlog::error("{} failed: {}", endpoint, e.message);
  }
  ReportRequest(*core.metrics, req, end);
}

}  // namespace pipeinfer::router
