// OpenAI request bodies -> GenRequest: POST /v1/chat/completions ({"messages": [...]}) and
// /v1/completions ({"prompt": "..."} or token ids), with the common fields (model, n, max_tokens /
// max_completion_tokens, temperature, top_p, top_k, repetition_penalty, seed, stop, stream).
// Every problem is an Error with OpenAI's status and wording: malformed JSON, invalid UTF-8, a
// field of the wrong JSON type -> 400 (not 422); unknown model -> 404; a prompt that cannot fit
// the context -> 400 "context_length_exceeded". HTTP defaults follow OpenAI (temperature 1 when
// absent) and a max_tokens beyond the context is an error, not clamped.
#pragma once

#include <optional>
#include <string>

#include "router/error.h"
#include "router/gen_request.h"
#include "router/request_builder.h"

namespace pipeinfer::router {

// Parses `body`, tokenizes the prompt and checks the context; *stream = the "stream" field.
std::optional<Error> ParseOpenAiRequest(const std::string& body, bool chat,
                                        const RequestBuilder& builder, GenRequest* g, bool* stream);

}  // namespace pipeinfer::router
