#include "router/error.h"

#include <nlohmann/json.hpp>

namespace pipeinfer::router {
namespace {

using json = nlohmann::json;

std::string OaiType(const Error& e) {
  switch (e.code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kNotFound:
      return "invalid_request_error";
    case absl::StatusCode::kResourceExhausted:
      return "rate_limit_exceeded";
    case absl::StatusCode::kUnavailable:
      return "service_unavailable";
    case absl::StatusCode::kUnauthenticated:
      return "invalid_request_error";
    default:
      return "server_error";
  }
}

}  // namespace

Error Invalid(std::string message, std::string param) {
  return Error{absl::StatusCode::kInvalidArgument, std::move(message), std::move(param), ""};
}

int HttpStatusFor(const Error& e) {
  if (e.http_status > 0) return e.http_status;
  switch (e.code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    default:
      return 500;
  }
}

json ErrorBody(const Error& e) {
  json err;
  err["message"] = e.message;
  err["type"] = OaiType(e);
  err["param"] = e.param.empty() ? json(nullptr) : json(e.param);
  err["code"] = e.oai_code.empty() ? json(nullptr) : json(e.oai_code);
  return json{{"error", err}};
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace pipeinfer::router
