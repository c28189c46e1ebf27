#include "router/api_keys.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace pipeinfer::router {

bool ConstantTimeEquals(absl::string_view presented, absl::string_view expected) {
  // Accumulate differences over the presented bytes (compared cyclically with expected) and the
  // length; no early exit.
  volatile unsigned char diff = presented.size() == expected.size() ? 0 : 1;
  if (expected.empty()) return presented.empty();
  for (size_t i = 0; i < presented.size(); ++i) {
    diff = diff | static_cast<unsigned char>(presented[i] ^ expected[i % expected.size()]);
  }
  return diff == 0;
}

absl::StatusOr<ApiKeys> ApiKeys::FromFile(const std::string& path) {
  ApiKeys k;
  if (path.empty()) return k;
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the API keys file ", path));
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view t = absl::StripAsciiWhitespace(line);
    if (t.empty() || t[0] == '#') continue;
    k.keys_.emplace_back(t);
  }
  if (k.keys_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("the API keys file ", path, " holds no key"));
  }
  return k;
}

ApiKeys ApiKeys::FromKeys(std::vector<std::string> keys) {
  ApiKeys k;
  k.keys_ = std::move(keys);
  return k;
}

absl::Status ApiKeys::Check(absl::string_view authorization) const {
  if (keys_.empty()) return absl::OkStatus();
  absl::string_view v = absl::StripAsciiWhitespace(authorization);
  if (v.empty()) {
    return absl::UnauthenticatedError("missing API key: send it as 'Authorization: Bearer <key>'");
  }
  constexpr absl::string_view kScheme = "bearer ";
  if (v.size() <= kScheme.size() || !absl::StartsWithIgnoreCase(v, kScheme)) {
    return absl::UnauthenticatedError("malformed Authorization: expected 'Bearer <key>'");
  }
  v = absl::StripAsciiWhitespace(v.substr(kScheme.size()));
  bool ok = false;
  for (const std::string& key : keys_) ok = ConstantTimeEquals(v, key) || ok;
  if (!ok) return absl::UnauthenticatedError("invalid API key");
  return absl::OkStatus();
}

}  // namespace pipeinfer::router
