#include "cluster/health_probe.h"

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "rpc/credentials.h"

namespace pipeinfer::cluster {

const char* HealthName(Health h) {
  switch (h) {
    case Health::kServing:
      return "SERVING";
    case Health::kNotServing:
      return "NOT_SERVING";
    case Health::kUnreachable:
      return "UNREACHABLE";
  }
  return "UNREACHABLE";
}

Health GrpcHealth(const std::string& address, const std::string& tls_dir,
                  std::chrono::milliseconds timeout) {
  auto creds = rpc::MakeChannelCredentials(rpc::TlsFilesInDir(tls_dir, "client"));
  if (!creds.ok()) return Health::kUnreachable;
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateCustomChannel(address, *creds, args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  const grpc::Status st = stub->Check(&ctx, req, &resp);
  if (!st.ok()) return Health::kUnreachable;
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? Health::kServing
                                                                         : Health::kNotServing;
}

Health RouterReady(const std::string& http_address, const std::string& tls_dir,
                   const std::string& api_key, std::string* detail,
                   std::chrono::milliseconds timeout) {
  const bool tls = !tls_dir.empty();
  httplib::Client c((tls ? "https://" : "http://") + http_address);
  if (tls) {
    c.set_ca_cert_path((tls_dir + "/ca.pem").c_str());
    c.enable_server_certificate_verification(true);
  }
  const auto sec = std::chrono::duration_cast<std::chrono::seconds>(timeout);
  const auto usec = std::chrono::duration_cast<std::chrono::microseconds>(timeout - sec);
  c.set_connection_timeout(sec.count(), usec.count());
  c.set_read_timeout(sec.count(), usec.count());
  httplib::Headers h;
  if (!api_key.empty()) h.emplace("Authorization", "Bearer " + api_key);
  auto r = c.Get("/ready", h);
  if (!r) {
    if (detail) *detail = httplib::to_string(r.error());
    return Health::kUnreachable;
  }
  if (detail) *detail = absl::StrCat("HTTP ", r->status, " ", r->body);
  return r->status == 200 ? Health::kServing : Health::kNotServing;
}

}  // namespace pipeinfer::cluster
