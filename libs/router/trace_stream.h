// GET /v1/internal/trace[?request_id=ID]: the run events of the draft services (Draft.Trace of
// every replica, merged) as server-sent events, one JSON object per event (docs/tracing.md), for
// the live pipeline view. The stream stays open until the client leaves; a comment line every 5 s
// keeps idle connections alive. The draft services produce events only while such a stream is
// open.
#pragma once

#include "router/core.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace pipeinfer::router {

void ServeTrace(Core& core, const httplib::Request& req, httplib::Response& res);

}  // namespace pipeinfer::router
