// The pipeinfer.v1.Router gRPC service: Chat and Complete (the same validation, admission and
// generation as HTTP; unset sampling fields take the draft service's defaults and a max_tokens
// beyond the context is refused with OUT_OF_RANGE, as over HTTP), ListModels, and GetClusterStats
// (the router's counters, then the draft service's GetStats with include_pipeline: the draft
// service, then every stage in pipeline order, chained from stage 0).
#pragma once

#include <memory>

#include "router/core.h"

namespace grpc {
class Service;
}  // namespace grpc

namespace pipeinfer::router {

std::unique_ptr<grpc::Service> MakeRouterService(Core& core);

}  // namespace pipeinfer::router
