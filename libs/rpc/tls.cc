#include "rpc/tls.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace pipeinfer::rpc {

namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the TLS ", what, " file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("the TLS ", what, " file ", path, " is not PEM (no -----BEGIN line)"));
  }
  return text;
}

}  // namespace

absl::StatusOr<TlsPem> LoadTls(const TlsFiles& files, bool server) {
  TlsPem pem;
  if (!files.enabled()) return pem;
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (server && files.cert.empty()) {
    return absl::InvalidArgumentError("a TLS server needs --tls-cert and --tls-key");
  }
  if (!server && files.ca.empty()) {
    return absl::InvalidArgumentError("a TLS client needs --tls-ca to verify the server");
  }
  if (!files.ca.empty()) {
    auto ca = ReadPem(files.ca, "CA");
    if (!ca.ok()) return ca.status();
    pem.ca = std::move(*ca);
  }
  if (!files.cert.empty()) {
    auto cert = ReadPem(files.cert, "certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadPem(files.key, "key");
    if (!key.ok()) return key.status();
    pem.cert = std::move(*cert);
    pem.key = std::move(*key);
  }
  return pem;
}

TlsFiles TlsFilesInDir(const std::string& dir, const std::string& name) {
  if (dir.empty()) return {};
  return TlsFiles{absl::StrCat(dir, "/ca.pem"), absl::StrCat(dir, "/", name, ".pem"),
                  absl::StrCat(dir, "/", name, "-key.pem")};
}

std::vector<std::string> SplitAllowList(const std::string& list) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(list, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (!part.empty()) out.emplace_back(part);
  }
  return out;
}

}  // namespace pipeinfer::rpc
