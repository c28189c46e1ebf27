#include "router/http_limits.h"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace pipeinfer::router {

// A chunked body over the limit is drained (read and dropped) so that the answer reaches the
// client; past this much more the connection is given up on.
constexpr uint64_t kMaxDrainBytes = uint64_t{64} << 20;

Error BodyTooLarge(uint64_t bytes, size_t max_bytes) {
  Error e = Invalid(
      bytes > 0 ? absl::StrCat("The request body is too large: ", bytes,
                               " bytes, more than this router's limit of ", max_bytes,
                               " bytes (--max-body-bytes).")
                : absl::StrCat("The request body is too large: more than this router's limit of ",
                               max_bytes, " bytes (--max-body-bytes)."));
  e.oai_code = "request_too_large";
  e.http_status = 413;
  return e;
}

std::optional<Error> ReadBody(const httplib::Request& req, httplib::Response& res,
                              const httplib::ContentReader& reader, size_t max_bytes,
                              std::string* body) {
  uint64_t received = 0;
  bool too_large = false;
  const bool ok = reader([&](const char* data, size_t n) {
    received += n;
    if (received > max_bytes) {
      too_large = true;
      body->clear();
      body->shrink_to_fit();
      return received <= max_bytes + kMaxDrainBytes;
    }
    body->append(data, n);
    return true;
  });
  if (!ok && res.status == 413) {  // the library refused the Content-Length and skipped the body
    return BodyTooLarge(req.get_header_value<uint64_t>("Content-Length"), max_bytes);
  }
  if (too_large) {
    // Drained past kMaxDrainBytes: the rest of the body is still on the connection.
    if (!ok) res.set_header("Connection", "close");
    return BodyTooLarge(ok ? received : 0, max_bytes);
  }
  if (!ok) return Invalid("could not read the request body");
  return std::nullopt;
}

absl::Status RaiseListenBacklog(int fd, int backlog) {
  int listening = 0;
  socklen_t len = sizeof(listening);
  if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) {
    return absl::InternalError("the HTTP listening socket was not found");
  }
  if (::listen(fd, backlog) != 0) {
    return absl::InternalError(
        absl::StrCat("listen(backlog ", backlog, "): ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

size_t HttpThreads(const RouterOptions& o) {
  if (o.http_threads > 0) return static_cast<size_t>(o.http_threads);
  return static_cast<size_t>(std::max(64, o.max_inflight + o.max_queue + 32));
}

}  // namespace pipeinfer::router
