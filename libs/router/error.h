// A request error as the router reports it, and its two renderings: a gRPC status (the code is
// the gRPC code, held as absl::StatusCode, which has the same numbering) and an OpenAI-style HTTP
// error: status plus body {"error": {"message", "type", "param", "code"}}.
#pragma once

#include <string>

#include <nlohmann/json_fwd.hpp>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace pipeinfer::router {

struct Error {
  absl::StatusCode code = absl::StatusCode::kInternal;
  std::string message;
  std::string param;     // HTTP: the offending request field, if any
  std::string oai_code;  // HTTP: OpenAI's error code ("context_length_exceeded"), if any
  int http_status = 0;   // HTTP: overrides the status derived from `code` (e.g. 413) when > 0
};

// An INVALID_ARGUMENT error (HTTP 400).
Error Invalid(std::string message, std::string param = "");

// The HTTP status of an error: 400 invalid / out of range, 404, 429, 503, 504, 499 for a client
// that went away (nginx's "client closed request"), else 500.
int HttpStatusFor(const Error& e);

// {"error": {"message", "type", "param", "code"}}.
nlohmann::json ErrorBody(const Error& e);

// JSON text; invalid UTF-8 in strings is replaced rather than thrown on.
std::string Dump(const nlohmann::json& j);

// Debian's Abseil has its own absl::string_view (not std::string_view).
inline std::string S(absl::string_view v) { return std::string(v.data(), v.size()); }

}  // namespace pipeinfer::router
