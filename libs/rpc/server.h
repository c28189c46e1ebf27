// Starting a service's gRPC server the same way everywhere: the default health service, reflection
// (plaintext only: off when TLS is on), TLS / mutual TLS (tls.h), the message size limits, and a
// readable error when the address cannot be bound. Included only by
// the services' .cc files (it pulls in grpcpp).
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "rpc/tls.h"

namespace pipeinfer::rpc {

// Binds `address` (HOST:PORT, port 0 = a free one), registers `service`, starts serving and stores
// the bound port in `*port`. `max_message_bytes` 0 keeps gRPC's default limits. `tls` empty =
// plaintext with reflection; otherwise TLS (mutual when tls.ca is set) without reflection.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartServer(const std::string& address,
                                                          grpc::Service* service,
                                                          uint64_t max_message_bytes, int* port,
                                                          const TlsFiles& tls = {});

}  // namespace pipeinfer::rpc
