// POST /v1/chat/completions and /v1/completions: reads the body (--max-body-bytes: 413), parses
// it into a GenRequest (400/404), waits for admission (429), then answers with one JSON object or,
// with "stream": true, with server-sent events (sse_stream.h). The connection is watched while
// the request waits and generates: when the client goes away the draft call is cancelled within
// about 100 ms, which frees the draft session, the stages' KV blocks and the admission slot.
#pragma once

#include "router/core.h"

namespace httplib {
class ContentReader;
struct Request;
struct Response;
}  // namespace httplib

namespace pipeinfer::router {

void ServeGeneration(Core& core, const httplib::Request& req, httplib::Response& res,
                     const httplib::ContentReader& reader, bool chat);

}  // namespace pipeinfer::router
