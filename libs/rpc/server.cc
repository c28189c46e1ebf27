#include "rpc/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"

namespace pipeinfer::rpc {

absl::StatusOr<std::unique_ptr<grpc::Server>> StartServer(const std::string& address,
                                                          grpc::Service* service,
                                                          uint64_t max_message_bytes, int* port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder b;
  *port = 0;
  b.AddListeningPort(address, grpc::InsecureServerCredentials(), port);
  // gRPC sets SO_REUSEPORT by default: a second server on the same port would bind too and
  // receive part of the connections meant for this one. A taken port must be a start-up error.
  b.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  if (max_message_bytes > 0) {
    b.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes));
    b.SetMaxSendMessageSize(static_cast<int>(max_message_bytes));
  }
  b.RegisterService(service);
  std::unique_ptr<grpc::Server> server = b.BuildAndStart();
  if (!server || *port == 0)
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, " (gRPC): the port is taken or not allowed"));
  return server;
}

}  // namespace pipeinfer::rpc
