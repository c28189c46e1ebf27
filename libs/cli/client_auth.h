// The security flags of the CLI clients (`chat`, `complete`, `stats`, `bench`): --tls-dir DIR
// (the directory `pipeinfer up --tls` wrote: ca.pem verifies the servers, client.pem /
// client-key.pem is presented to them) and --api-key K (default: env PIPEINFER_API_KEY), sent as
// "Authorization: Bearer K" to the router. No gRPC or cpp-httplib include here.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "rpc/tls.h"

namespace pipeinfer::cli {

struct ClientAuth {
  std::string tls_dir;  // empty: plaintext
  std::string api_key;  // empty: env PIPEINFER_API_KEY, else none

  rpc::TlsFiles tls() const { return rpc::TlsFilesInDir(tls_dir, "client"); }
  // The key to send ("" = none): --api-key, else PIPEINFER_API_KEY.
  std::string Key() const;
  // "Bearer <key>", or "" without a key.
  std::string Authorization() const;
};

void AddClientAuthFlags(CLI::App* cmd, ClientAuth* auth);

}  // namespace pipeinfer::cli
