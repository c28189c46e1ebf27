// API keys at the router (the cluster's edge): a Bearer token on HTTP (Authorization: Bearer K)
// and `authorization` metadata on gRPC ("Bearer K"). Keys come from a file, one per line (blank
// lines and lines starting with '#' ignored); each presented key is compared with every
// configured key in constant time (the time does not depend on where the first differing byte
// is, nor on which key matched). Keys are never logged: a refusal names the reason only.
// No gRPC or cpp-httplib include in this header.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pipeinfer::router {

class ApiKeys {
 public:
  ApiKeys() = default;  // no keys: every request is allowed
  // Reads `path` (one key per line). An empty path gives no keys; a file without any key is an
  // error (it would silently open the router).
  static absl::StatusOr<ApiKeys> FromFile(const std::string& path);
  static ApiKeys FromKeys(std::vector<std::string> keys);

  bool enabled() const { return !keys_.empty(); }
  // Checks an Authorization header / metadata value ("Bearer K", scheme case-insensitive).
  // OK when no keys are configured; UNAUTHENTICATED ("missing" or "invalid" API key, the key
  // itself never in the message) otherwise.
  absl::Status Check(absl::string_view authorization) const;

 private:
  std::vector<std::string> keys_;
};

// Constant-time equality for secrets: looks at every byte of `presented` whatever the contents;
// the length of `expected` only is revealed by timing.
bool ConstantTimeEquals(absl::string_view presented, absl::string_view expected);

}  // namespace pipeinfer::router
