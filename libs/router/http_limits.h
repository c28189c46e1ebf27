// The HTTP server's protection against bad or abusive input, for cpp-httplib 0.11.4 as Debian
// ships it (compiled into libcpp-httplib.so, so its CPPHTTPLIB_* macros cannot be changed here):
//   * request bodies over --max-body-bytes are refused with 413 before they are parsed, and
//     without being held in memory (see ReadBody);
//   * the listen backlog the library compiles in (5) is raised after bind (RaiseListenBacklog);
//   * the worker pool is sized so that every admitted or queued request, plus idle keep-alive
//     connections, has a thread (HttpThreads).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "router/error.h"
#include "router/router.h"

namespace httplib {
class ContentReader;
struct Request;
struct Response;
}  // namespace httplib

namespace pipeinfer::router {

// The 413 error (OpenAI shape, code "request_too_large"); `bytes` 0 when the size is unknown.
Error BodyTooLarge(uint64_t bytes, size_t max_bytes);

// Reads the request body into *body, holding at most `max_bytes`. A body announced larger by its
// Content-Length is skipped by the library without being stored (payload_max_length is set to
// the same limit) and a chunked body is read and discarded past the limit, so the client gets its
// 413 on a connection that is still in a clean state. nullopt when the body was read.
std::optional<Error> ReadBody(const httplib::Request& req, httplib::Response& res,
                              const httplib::ContentReader& reader, size_t max_bytes,
                              std::string* body);

// Listens again on the bound socket `fd` with `backlog` (Linux updates the backlog of a socket
// that is already listening; the kernel caps it at net.core.somaxconn).
absl::Status RaiseListenBacklog(int fd, int backlog);

// The HTTP worker threads: --http-threads, or when 0 max(64, max_inflight + max_queue + 32). A
// streamed request holds its thread for its whole duration and a keep-alive connection holds one
// between requests; a connection without a thread waits unseen in the pool's queue, so there
// should be room for every admitted and queued request plus the ones that should get a prompt
// 429 (and /health, /metrics).
size_t HttpThreads(const RouterOptions& o);

}  // namespace pipeinfer::router
