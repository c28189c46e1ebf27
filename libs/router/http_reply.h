// Sending an Error as an OpenAI-style HTTP error response (and counting it).
#pragma once

#include <string>

#include "router/core.h"
#include "router/error.h"

namespace httplib {
struct Response;
}  // namespace httplib

namespace pipeinfer::router {

// Status from the error (429 with Retry-After), JSON body {"error": {...}}, counted in
// requests_total{endpoint, code}; a client that went away (499) also in requests_cancelled_total.
void SendError(Core& core, httplib::Response& res, const std::string& endpoint, const Error& e);

}  // namespace pipeinfer::router
