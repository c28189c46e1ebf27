// OpenAI request bodies -> GenRequest: POST /v1/chat/completions ({"messages": [...]}) and
// /v1/completions ({"prompt": "..."} or token ids). Every field is handled or refused (see
// openai_fields.h for the lists): model, n (1), max_tokens / max_completion_tokens, temperature,
// top_p, seed, stop, stream, stream_options.include_usage, presence_penalty, frequency_penalty,
// logit_bias ({"token id": bias in [-100, 100]}), logprobs (chat: boolean with top_logprobs
// 0..20; completions: 0..5 alternatives), user, and the extensions top_k, min_p,
// repetition_penalty, ignore_eos and mode ("plain" | "sync" | "pipeinfer": the speculation mode).
// Every problem is an Error with OpenAI's status and wording: malformed JSON, invalid UTF-8, a
// field of the wrong JSON type, an unknown or unsupported field -> 400 (not 422) naming the field
// in `param`; unknown model -> 404; a prompt that cannot fit the context -> 400
// "context_length_exceeded". HTTP defaults follow OpenAI (temperature 1 when absent) and a
// max_tokens beyond the context is an error (as over gRPC), not clamped.
#pragma once

#include <optional>
#include <string>

#include "router/error.h"
#include "router/gen_request.h"
#include "router/request_builder.h"

namespace pipeinfer::router {

// How the answer is delivered.
struct HttpOptions {
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
};

// Parses `body`, tokenizes the prompt and checks the context.
std::optional<Error> ParseOpenAiRequest(const std::string& body, bool chat,
                                        const RequestBuilder& builder, GenRequest* g,
                                        HttpOptions* options);

}  // namespace pipeinfer::router
