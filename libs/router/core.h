// What the router's front ends (OpenAI HTTP, gRPC Router service) share, built once by
// Router::Start and read-only afterwards (the parts synchronize themselves).
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "router/admission.h"
#include "router/api_keys.h"
#include "router/connection_watch.h"
#include "router/draft_pool.h"
#include "router/generation.h"
#include "router/request_builder.h"
#include "router/router.h"
#include "router/router_metrics.h"
#include "router/served_model.h"

namespace pipeinfer::router {

struct Core {
  RouterOptions options;
  ServedModel model;
  std::unique_ptr<DraftPool> drafts;  // the draft services (pipeline replicas)
  std::string default_mode;           // the draft services' default speculation mode
  uint32_t n_stages = 0;              // stages per pipeline (0: unknown)
  std::atomic<bool> draining{false};  // SIGTERM: /ready answers 503, requests still served
  std::unique_ptr<RequestBuilder> requests;
  std::unique_ptr<RouterMetrics> metrics;
  std::unique_ptr<Admission> admission;
  std::unique_ptr<Generator> generator;
  std::unique_ptr<DisconnectWatcher> watcher;  // HTTP clients that go away mid-request
  ApiKeys api_keys;                            // none: every request is allowed
};

}  // namespace pipeinfer::router
