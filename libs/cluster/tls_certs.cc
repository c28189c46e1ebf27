#include "cluster/tls_certs.h"

#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pipeinfer::cluster {

namespace fs = std::filesystem;

namespace {

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char ch : s) {
    if (ch == '\'') {
      out += "'\\''";
    } else {
      out += ch;
    }
  }
  return out + "'";
}

// Runs an openssl command line (arguments already quoted); its output goes to DIR/openssl.log.
absl::Status RunOpenssl(const std::string& dir, const std::string& args) {
  const std::string cmd =
      absl::StrCat("openssl ", args, " >>", Quote(dir + "/openssl.log"), " 2>&1");
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("openssl failed (",
                                            WIFEXITED(rc) ? WEXITSTATUS(rc) : rc,
                                            ") making the TLS certificates; see ", dir,
                                            "/openssl.log (is the openssl command installed?)"));
  }
  return absl::OkStatus();
}

bool IsIp(const std::string& h) {
  return !h.empty() && h.find_first_not_of("0123456789.") == std::string::npos;
}

}  // namespace

absl::Status MakeClusterCerts(const std::string& dir, const std::vector<std::string>& names,
                              const std::string& extra_host) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  chmod(dir.c_str(), 0700);
  const std::string ca = dir + "/ca.pem", ca_key = dir + "/ca-key.pem";
  const std::string ec_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  if (!fs::exists(ca) || !fs::exists(ca_key)) {
    if (auto st = RunOpenssl(dir, absl::StrCat("req -x509 ", ec_key,
                                               " -days 30 -subj /CN=pipeinfer-local-ca -keyout ",
                                               Quote(ca_key), " -out ", Quote(ca)));
        !st.ok()) {
      return st;
    }
    chmod(ca_key.c_str(), 0600);
  }
  std::vector<std::string> sans = {"DNS:localhost", "IP:127.0.0.1"};
  if (!extra_host.empty() && extra_host != "localhost" && extra_host != "127.0.0.1" &&
      extra_host != "0.0.0.0") {
    sans.push_back(absl::StrCat(IsIp(extra_host) ? "IP:" : "DNS:", extra_host));
  }
  const std::string ext = dir + "/leaf.ext";
  {
    std::ofstream out(ext);
    out << "basicConstraints=CA:FALSE\n"
        << "keyUsage=digitalSignature,keyEncipherment\n"
        << "extendedKeyUsage=serverAuth,clientAuth\n"
        << "subjectAltName=" << absl::StrJoin(sans, ",") << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", ext));
  }
  for (const std::string& name : names) {
    const std::string cert = dir + "/" + name + ".pem", key = dir + "/" + name + "-key.pem";
    if (fs::exists(cert) && fs::exists(key)) continue;
    const std::string csr = dir + "/" + name + ".csr";
    if (auto st = RunOpenssl(dir, absl::StrCat("req -new ", ec_key, " -subj /CN=", name,
                                               " -keyout ", Quote(key), " -out ", Quote(csr)));
        !st.ok()) {
      return st;
    }
    chmod(key.c_str(), 0600);
    if (auto st = RunOpenssl(
            dir, absl::StrCat("x509 -req -in ", Quote(csr), " -CA ", Quote(ca), " -CAkey ",
                              Quote(ca_key), " -CAcreateserial -days 30 -extfile ", Quote(ext),
                              " -out ", Quote(cert)));
        !st.ok()) {
      return st;
    }
    fs::remove(csr, ec);
  }
  return absl::OkStatus();
}

}  // namespace pipeinfer::cluster
