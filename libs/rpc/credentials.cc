#include "rpc/credentials.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pipeinfer::rpc {

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files) {
  if (!files.enabled()) return grpc::InsecureServerCredentials();
  auto pem = LoadTls(files, /*server=*/true);
  if (!pem.ok()) return pem.status();
  grpc::SslServerCredentialsOptions o(
      pem->ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                      : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  o.pem_root_certs = pem->ca;
  o.pem_key_cert_pairs.push_back({pem->key, pem->cert});
  return grpc::SslServerCredentials(o);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files) {
  if (!files.enabled()) return grpc::InsecureChannelCredentials();
  auto pem = LoadTls(files, /*server=*/false);
  if (!pem.ok()) return pem.status();
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = pem->ca;
  o.pem_private_key = pem->key;
  o.pem_cert_chain = pem->cert;
  return grpc::SslCredentials(o);
}

std::vector<std::string> PeerNames(const grpc::ServerContext& ctx) {
  std::vector<std::string> names;
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (!auth || !auth->IsPeerAuthenticated()) return names;
  for (const char* prop : {"x509_common_name", "x509_subject_alternative_name"}) {
    for (const grpc::string_ref& v : auth->FindPropertyValues(prop)) {
      names.emplace_back(v.data(), v.size());
    }
  }
  return names;
}

grpc::Status CheckPeerAllowed(const grpc::ServerContext& ctx, const std::vector<std::string>& allow,
                              const std::string& what) {
  if (allow.empty()) return grpc::Status::OK;
  const std::vector<std::string> names = PeerNames(ctx);
  if (names.empty()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        absl::StrCat(what, " needs a client certificate (mutual TLS)"));
  }
  for (const std::string& n : names) {
    if (std::find(allow.begin(), allow.end(), n) != allow.end()) return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      absl::StrCat(what, " is not open to the peer [", absl::StrJoin(names, ", "),
                                   "]: not in the allow-list"));
}

}  // namespace pipeinfer::rpc
