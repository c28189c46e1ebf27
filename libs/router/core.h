// What the router's front ends (OpenAI HTTP, gRPC Router service) share, built once by
// Router::Start and read-only afterwards (the parts synchronize themselves).
#pragma once

#include <memory>

#include "router/admission.h"
#include "router/connection_watch.h"
#include "router/generation.h"
#include "router/request_builder.h"
#include "router/router.h"
#include "router/router_metrics.h"
#include "router/served_model.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace pipeinfer::router {

struct Core {
  RouterOptions options;
  ServedModel model;
  std::shared_ptr<grpc::Channel> draft_channel;
  std::unique_ptr<RequestBuilder> requests;
  std::unique_ptr<RouterMetrics> metrics;
  std::unique_ptr<Admission> admission;
  std::unique_ptr<Generator> generator;
  std::unique_ptr<DisconnectWatcher> watcher;  // HTTP clients that go away mid-request
};

}  // namespace pipeinfer::router
