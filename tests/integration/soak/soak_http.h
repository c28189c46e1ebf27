// The soak test's HTTP/1.1 client (tests/integration/soak/soak_test.cc): one request per
// connection on a plain socket, reporting exactly how the exchange ended at the socket level.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

#include <nlohmann/json.hpp>

namespace pipeinfer::soak {

using json = nlohmann::json;

// A member of a JSON object, or null when it is absent: operator[] on a const json must not be
// used for a key that may be missing.
inline const json& Member(const json& j, const char* key) {
  static const json kNull;
  if (!j.is_object()) return kNull;
  auto it = j.find(key);
  return it == j.end() ? kNull : *it;
}
using Clock = std::chrono::steady_clock;

// A pause longer than this without a byte from the router is a hang. Generous: a request may
// legitimately wait in the router's queue behind the requests that generate.
constexpr int kIdleTimeoutS = 90;
// Retry-After is obeyed up to this many seconds, so that a bogus value cannot stall a client.
constexpr int kMaxRetryAfterS = 5;

inline int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::max(1, std::atoi(v));
}

inline double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client that reports exactly how the exchange ended at the socket level.

enum class Transport {
  kComplete,          // a full response (head and body as framed)
  kConnectFailed,     // connect() failed
  kReset,             // ECONNRESET or EPIPE while sending or receiving
  kSocketError,       // another send/recv error
  kClosedBeforeHead,  // EOF before a complete response head
  kTruncated,         // EOF inside the body
  kBadFraming,        // an unparsable status line or chunk header
  kTimeout,           // no byte for kIdleTimeoutS
};

inline const char* TransportName(Transport t) {
  switch (t) {
    case Transport::kComplete:
      return "complete";
    case Transport::kConnectFailed:
      return "connect failed";
    case Transport::kReset:
      return "connection reset";
    case Transport::kSocketError:
      return "socket error";
    case Transport::kClosedBeforeHead:
      return "closed before the response head";
    case Transport::kTruncated:
      return "body cut short";
    case Transport::kBadFraming:
      return "bad HTTP framing";
    case Transport::kTimeout:
      return "timeout";
  }
  return "?";
}

struct Exchange {
  Transport transport = Transport::kComplete;
  int err = 0;        // errno of the failed call
  bool head = false;  // a response head was parsed
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;                            // de-chunked
  double head_s = 0;                           // request sent -> response head
  double total_s = 0;                          // connect -> end of the response
};

inline std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

inline Transport ErrnoTransport(int e) {
  if (e == EAGAIN || e == EWOULDBLOCK) return Transport::kTimeout;
  if (e == ECONNRESET || e == EPIPE) return Transport::kReset;
  return Transport::kSocketError;
}

// Parses "HTTP/1.1 200 OK\r\nName: value\r\n..." (without the final blank line).
inline bool ParseHead(const std::string& head, Exchange* x) {
  size_t eol = head.find("\r\n");
  const std::string status_line = head.substr(0, eol);
  if (status_line.rfind("HTTP/1.", 0) != 0 || status_line.size() < 12) return false;
  x->status = std::atoi(status_line.c_str() + 9);
  if (x->status < 100 || x->status > 599) return false;
  while (eol != std::string::npos) {
    const size_t start = eol + 2;
    eol = head.find("\r\n", start);
    const std::string line = head.substr(start, eol == std::string::npos ? eol : eol - start);
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    x->headers[Lower(line.substr(0, colon))] = value;
  }
  return true;
}

// Decodes as much of a chunked body as `raw` holds from `*pos`. 1: the last chunk and its
// trailer arrived; 0: more bytes needed; -1: bad framing.
inline int DechunkSome(const std::string& raw, size_t* pos, std::string* body) {
  while (true) {
    const size_t eol = raw.find("\r\n", *pos);
    if (eol == std::string::npos) return 0;
    const std::string size_line = raw.substr(*pos, eol - *pos);
    char* end = nullptr;
    const unsigned long size = std::strtoul(size_line.c_str(), &end, 16);
    if (end == size_line.c_str() || (*end != '\0' && *end != ';')) return -1;
    if (size == 0) {
      // Trailer fields (none expected), then an empty line.
      const size_t trailer_end = raw.find("\r\n", eol + 2);
      if (trailer_end == std::string::npos) return 0;
      return trailer_end == eol + 2 ? 1 : -1;
    }
    if (raw.size() < eol + 2 + size + 2) return 0;
    if (raw.compare(eol + 2 + size, 2, "\r\n") != 0) return -1;
    body->append(raw, eol + 2, size);
    *pos = eol + 2 + size + 2;
  }
}

inline Exchange HttpExchange(int port, const std::string& method, const std::string& path,
                             const std::string& body) {
  Exchange x;
  const auto t0 = Clock::now();
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    x.transport = Transport::kSocketError;
    x.err = errno;
    return x;
  }
  timeval tv{kIdleTimeoutS, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  auto finish = [&](Transport t, int err) {
    x.transport = t;
    x.err = err;
    x.total_s = Seconds(Clock::now() - t0);
    close(fd);
    return x;
  };
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    return finish(Transport::kConnectFailed, errno);
  }
  std::string request = method + " " + path +
                        " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                        "Accept: */*\r\n";
  if (!body.empty()) {
    request +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  request += "\r\n" + body;
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return finish(ErrnoTransport(errno), errno);
    sent += static_cast<size_t>(n);
  }
  const auto sent_at = Clock::now();

  std::string raw;
  size_t body_start = 0, chunk_pos = 0;
  bool chunked = false;
  long long content_length = -1;  // -1: until EOF
  char buf[16384];
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return finish(ErrnoTransport(errno), errno);
    }
    if (n == 0) {  // EOF
      if (!x.head) return finish(Transport::kClosedBeforeHead, 0);
      if (chunked || content_length >= 0) return finish(Transport::kTruncated, 0);
      x.body = raw.substr(body_start);
      return finish(Transport::kComplete, 0);
    }
    raw.append(buf, static_cast<size_t>(n));
    if (!x.head) {
      const size_t end = raw.find("\r\n\r\n");
      if (end == std::string::npos) continue;
      if (!ParseHead(raw.substr(0, end), &x)) return finish(Transport::kBadFraming, 0);
      x.head = true;
      x.head_s = Seconds(Clock::now() - sent_at);
      body_start = chunk_pos = end + 4;
      chunked = Lower(x.headers["transfer-encoding"]).find("chunked") != std::string::npos;
      if (!chunked && x.headers.count("content-length")) {
        content_length = std::atoll(x.headers["content-length"].c_str());
      }
    }
    if (chunked) {
      const int r = DechunkSome(raw, &chunk_pos, &x.body);
      if (r < 0) return finish(Transport::kBadFraming, 0);
      if (r > 0) return finish(Transport::kComplete, 0);
    } else if (content_length >= 0 &&
               raw.size() - body_start >= static_cast<size_t>(content_length)) {
      x.body = raw.substr(body_start, static_cast<size_t>(content_length));
      return finish(Transport::kComplete, 0);
    }
  }
}

}  // namespace pipeinfer::soak
