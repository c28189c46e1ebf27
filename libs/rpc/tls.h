// TLS settings shared by every gRPC server and client of the cluster (no gRPC includes: safe to
// put in options structs). The credentials built from them live in rpc/credentials.h.
//
// Modes:
//   * all empty: plaintext (insecure credentials), as before;
//   * cert + key (server): TLS; with ca as well, mutual TLS: a client must present a certificate
//     signed by that CA (REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
//   * ca (client): TLS, the server's certificate is verified against ca (and its name against the
//     target host); with cert + key as well, the client presents its own certificate.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pipeinfer::rpc {

struct TlsFiles {
  std::string ca;    // PEM file of the CA that signs the peers' certificates
  std::string cert;  // PEM file of this process's certificate (chain)
  std::string key;   // PEM file of its private key
  bool enabled() const { return !ca.empty() || !cert.empty() || !key.empty(); }
};

// The files' contents.
struct TlsPem {
  std::string ca, cert, key;
};

// Checks the combination (cert and key both or neither; a server in TLS mode needs cert + key,
// `server` = true) and reads the files. All empty gives an empty TlsPem.
absl::StatusOr<TlsPem> LoadTls(const TlsFiles& files, bool server);

// The files of `dir` as written by `pipeinfer up --tls`: DIR/ca.pem, DIR/<name>.pem,
// DIR/<name>-key.pem.
TlsFiles TlsFilesInDir(const std::string& dir, const std::string& name);

// Splits a comma-separated allow-list ("a,b , c") into names; empty entries dropped.
std::vector<std::string> SplitAllowList(const std::string& list);

}  // namespace pipeinfer::rpc
