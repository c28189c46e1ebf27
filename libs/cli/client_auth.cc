#include "cli/client_auth.h"

#include <cstdlib>

namespace pipeinfer::cli {

std::string ClientAuth::Key() const {
  if (!api_key.empty()) return api_key;
  const char* env = std::getenv("PIPEINFER_API_KEY");
  return env ? env : "";
}

std::string ClientAuth::Authorization() const {
  const std::string k = Key();
  return k.empty() ? "" : "Bearer " + k;
}

void AddClientAuthFlags(CLI::App* cmd, ClientAuth* auth) {
  cmd->add_option("--tls-dir", auth->tls_dir,
                  "TLS: the certificate directory of `pipeinfer up --tls` (ca.pem verifies the "
                  "servers, client.pem is presented)");
  cmd->add_option("--api-key", auth->api_key,
                  "The router's API key (default: env PIPEINFER_API_KEY)");
}

}  // namespace pipeinfer::cli
