// A throwaway certificate authority for a local cluster (`pipeinfer up --tls`), made with the
// `openssl` command-line tool: DIR/ca.pem (+ ca-key.pem, kept to sign more), and for each name
// DIR/<name>.pem and DIR/<name>-key.pem: an EC P-256 certificate with subject CN=<name>, SANs
// DNS:localhost and IP:127.0.0.1 (plus the given extra host), usable as server and client
// certificate, valid 30 days. Existing files are kept (the CA too), missing ones are made, so that
// a second `up` with the same directory reuses them and clients keep working.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace pipeinfer::cluster {

// `extra_host`: another name or IP address the servers are reached at ("" or "127.0.0.1" /
// "localhost": none). Keys are written with mode 0600, the directory with 0700.
absl::Status MakeClusterCerts(const std::string& dir, const std::vector<std::string>& names,
                              const std::string& extra_host = "");

}  // namespace pipeinfer::cluster
