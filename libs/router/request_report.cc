#include "router/request_report.h"

#include <spdlog/spdlog.h>

#include <chrono>

#include "log/log.h"
#include "router/router_metrics.h"

namespace pipeinfer::router {

std::string ModeLabel(const v1::SpecConfig& spec, const std::string& default_mode) {
  switch (spec.mode()) {
    case v1::SPEC_MODE_PLAIN:
      return "plain";
    case v1::SPEC_MODE_SYNC:
      return "sync";
    case v1::SPEC_MODE_PIPEINFER:
      return "pipeinfer";
    default:
      return default_mode.empty() ? "unknown" : default_mode;
  }
}

void Admitted(RouterMetrics& metrics, GenRequest* g,
              std::chrono::steady_clock::time_point queued_at) {
  g->queue_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - queued_at).count();
  RouterMetrics::ModeSeries& series = metrics.Mode(g->mode);
  series.queue->Observe(g->queue_s);
  series.prompt_tokens->Increment(static_cast<double>(g->prompt.size()));
}

void ReportRequest(RouterMetrics& metrics, const GenRequest& g, const RequestEnd& end) {
  const double e2e =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - g.arrival).count();
  if (end.grpc) {
    metrics.CountGrpc(end.endpoint, end.code, g.mode);
  } else {
    metrics.CountHttp(end.endpoint, end.code, g.mode);
  }
  RouterMetrics::ModeSeries& series = metrics.Mode(g.mode);
  std::string finish;
  if (end.aborted) {
    finish = "abort";
    series.success_abort->Increment();
    metrics.CountCancelled(end.endpoint);
  } else if (end.result != nullptr) {
    finish = end.result->finish == v1::FINISH_REASON_LENGTH ? "length" : "stop";
    (finish == "length" ? series.success_length : series.success_stop)->Increment();
    series.e2e->Observe(e2e);
  }
  const uint32_t completion = end.result ? end.result->completion_tokens : 0;
  const log::RequestScope scope(g.request_id);
  const bool ok = end.grpc ? end.code == 0 : end.code < 400;
  log::Event(ok || end.aborted ? spdlog::level::info : spdlog::level::warn, "request",
             {{"endpoint", end.endpoint},
              {"model", metrics.model()},
              {"mode", g.mode},
              {"status", end.grpc ? GrpcCodeName(end.code) : std::to_string(end.code)},
              {"finish", finish},
              {"prompt_tokens", static_cast<int64_t>(g.prompt.size())},
              {"completion_tokens", static_cast<int64_t>(completion)},
              {"queue_s", g.queue_s},
              {"ttft_s", g.ttft_s},
              {"e2e_s", e2e},
              {"client", g.client},
              {"user", g.user},
              {"replica", g.replica}});
}

}  // namespace pipeinfer::router
