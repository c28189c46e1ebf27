// Sending an Error as an OpenAI-style HTTP error response (and counting it).
#pragma once

#include <string>

#include "router/core.h"
#include "router/error.h"
#include "router/gen_request.h"

namespace httplib {
struct Response;
}  // namespace httplib

namespace pipeinfer::router {

// Status from the error (429 and 503 with Retry-After), JSON body {"error": {...}}, reported as the
// end of `g` (request_report.h; null: a request refused before it was parsed): counted in
// http_requests_total{endpoint, http_code} and access-logged; a client that went away (499) is an
// abort.
void SendError(Core& core, httplib::Response& res, const std::string& endpoint, const Error& e,
               const GenRequest* g = nullptr);

}  // namespace pipeinfer::router
