#include "cluster/port_check.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace pipeinfer::cluster {

absl::Status CheckPortsFree(const ClusterConfig& c, bool stages_in_namespaces) {
  for (const auto& [address, what] : Listeners(c)) {
    // With link emulation the stages listen inside their own network namespaces.
    if (stages_in_namespaces && what.rfind("stage ", 0) == 0) continue;
    const size_t colon = address.rfind(':');
    const std::string host = address.substr(0, colon), port = address.substr(colon + 1);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo* res = nullptr;
    if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("cannot resolve ", address, " (", what, ")"));
    }
    const int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    int err = 0;
    if (fd >= 0) {
      const int yes = 1;  // like the servers: TIME_WAIT leftovers do not count as taken
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
      if (bind(fd, res->ai_addr, res->ai_addrlen) != 0) err = errno;
      close(fd);
    }
    freeaddrinfo(res);
    if (err == EADDRINUSE) {
      return absl::AlreadyExistsError(
          absl::StrCat("port ", port, " (", address, ", wanted by ", what,
                       ") is already in use: is another cluster or server running? Stop it "
                       "(`pipeinfer down`) or choose other ports (--base-port, --http-port, "
                       "--grpc-port, --metrics-base-port)"));
    }
    if (err != 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot bind ", address, " (", what, "): ", std::strerror(err)));
    }
  }
  return absl::OkStatus();
}

}  // namespace pipeinfer::cluster
