// Health probes of a local cluster's services, for `pipeinfer up` (waiting for SERVING) and
// `pipeinfer status`: the gRPC health service of a stage, draft service or router, and the
// router's HTTP /ready. With a certificate folder (`pipeinfer up --tls`) the probes verify the
// servers with its ca.pem and present its client.pem. No gRPC include here.
#pragma once

#include <chrono>
#include <string>

namespace pipeinfer::cluster {

enum class Health { kServing, kNotServing, kUnreachable };

// "SERVING", "NOT_SERVING", "UNREACHABLE".
const char* HealthName(Health h);

// grpc.health.v1.Health/Check (service "") at HOST:PORT, on a fresh channel (no reconnect
// backoff). `tls_dir` empty: plaintext.
Health GrpcHealth(const std::string& address, const std::string& tls_dir,
                  std::chrono::milliseconds timeout = std::chrono::milliseconds(500));

// GET /ready on the router's HTTP address (HTTPS with `tls_dir`): kServing on 200, kNotServing
// on any other status (`detail` gets the status and the body), kUnreachable when nothing answers.
// `api_key`, when not empty, is sent as a Bearer token (a router started with
// --protect-metrics wants one on /ready).
Health RouterReady(const std::string& http_address, const std::string& tls_dir,
                   const std::string& api_key, std::string* detail,
                   std::chrono::milliseconds timeout = std::chrono::milliseconds(2000));

}  // namespace pipeinfer::cluster
