// gRPC credentials from rpc::TlsFiles (tls.h), and the peer-identity check a server uses to accept
// a stream only from allowed certificates. Included only by .cc files (it pulls in grpcpp).
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rpc/tls.h"

namespace pipeinfer::rpc {

// Insecure when `files` is empty; TLS (mutual when files.ca is set) otherwise.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files);
// Insecure when `files` is empty; otherwise TLS verified against files.ca, presenting
// files.cert/key when given.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files);

// The names the peer's verified certificate carries: its subject CN and every SAN entry (DNS, IP,
// URI, as gRPC reports them). Empty on a plaintext connection or without a client certificate.
std::vector<std::string> PeerNames(const grpc::ServerContext& ctx);

// OK when `allow` is empty, or when one of PeerNames(ctx) is in `allow`; PERMISSION_DENIED
// (UNAUTHENTICATED without a certificate) naming the peer otherwise. `what` names the stream.
grpc::Status CheckPeerAllowed(const grpc::ServerContext& ctx, const std::vector<std::string>& allow,
                              const std::string& what);

}  // namespace pipeinfer::rpc
