#include "rpc/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "rpc/credentials.h"

namespace pipeinfer::rpc {

namespace {

// Removes the reflection plugin (registered process-wide by InitProtoReflectionServerBuilderPlugin)
// from one server: a TLS server does not describe its services to whoever connects.
class NoReflection : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(std::remove_if(plugins->begin(), plugins->end(),
                                  [](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
                                    return p->name().find("reflection") != std::string::npos;
                                  }),
                   plugins->end());
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<grpc::Server>> StartServer(const std::string& address,
                                                          grpc::Service* service,
                                                          uint64_t max_message_bytes, int* port,
                                                          const TlsFiles& tls) {
  auto creds = MakeServerCredentials(tls);
  if (!creds.ok()) return creds.status();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder b;
  *port = 0;
  b.AddListeningPort(address, *creds, port);
  if (tls.enabled()) b.SetOption(std::make_unique<NoReflection>());
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
