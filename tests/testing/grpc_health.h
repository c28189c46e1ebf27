// Waiting for a test's server process to become ready: its "listening on" line, then SERVING from
// the standard gRPC health service. A fresh channel per attempt avoids gRPC's reconnect backoff.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <string>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "testing/fixtures.h"
#include "testing/process.h"

namespace pipeinfer::testing {

inline bool HealthServing(const std::string& addr, std::chrono::milliseconds deadline) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  return stub->Check(&ctx, req, &resp).ok() &&
         resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

inline bool WaitServing(const std::string& addr, const std::string& log, ChildProcess& p,
                        std::chrono::seconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (ReadText(log).find("listening on") == std::string::npos) {
    if (!p.Running() || std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  while (std::chrono::steady_clock::now() < end && p.Running()) {
    if (HealthServing(addr, std::chrono::milliseconds(500))) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

}  // namespace pipeinfer::testing
