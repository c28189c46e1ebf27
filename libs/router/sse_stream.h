// A streamed answer (server-sent events, OpenAI chunks, "data: [DONE]" at the end). The
// generation runs on its own thread and hands events to cpp-httplib's chunked content provider.
// The handler first waits for the first text (or the end), so a request that fails before
// producing anything gets a real HTTP error status instead of a 200 with an error event.
#pragma once

#include <memory>
#include <string>

#include "router/client_link.h"
#include "router/core.h"
#include "router/gen_request.h"
#include "router/openai_response.h"

namespace httplib {
struct Response;
}  // namespace httplib

namespace pipeinfer::router {

// Counted in requests_total as 200 once the stream reached its end, or as 499 (and in
// requests_cancelled_total) when the client went away first.
void ServeStream(Core& core, httplib::Response& res, const std::string& endpoint,
                 std::shared_ptr<GenRequest> g, std::shared_ptr<Admission::Slot> slot,
                 std::shared_ptr<ClientLink> link, const AnswerHeader& header);

}  // namespace pipeinfer::router
