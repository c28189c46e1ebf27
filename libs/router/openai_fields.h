// Which top-level fields an OpenAI request body may carry, per endpoint: every field is either
// handled (parsed by openai_request.cc) or refused with a 400 naming it, never silently ignored.
//  * handled: model, messages / prompt, max_tokens, max_completion_tokens (chat), temperature,
//    top_p, n (1 only), stream, stream_options, stop, seed, presence_penalty, frequency_penalty,
//    logit_bias, logprobs, top_logprobs (chat), user, safety_identifier (chat, logged like user),
//    metadata (chat, accepted and not stored), store (false only), response_format ({"type":
//    "text"} only), service_tier ("auto" / "default"), echo (false only) / suffix (null or "") /
//    best_of (1 only) for completions, and the extensions top_k, min_p, repetition_penalty,
//    ignore_eos and mode ("plain" | "sync" | "pipeinfer");
//  * known OpenAI fields that this server does not implement (tools, tool_choice other than
//    "none", functions, function_call, parallel_tool_calls with tools, audio, modalities,
//    prediction, reasoning_effort, web_search_options, ...) -> 400 "'x' is not supported";
//  * anything else -> 400 "unknown field 'x'".
// Per-message fields (role, content, name, tool_calls, ...) are checked the same way.
#pragma once

#include <optional>

#include <nlohmann/json_fwd.hpp>

#include "router/error.h"

namespace pipeinfer::router {

// The first top-level field of `body` (an object) that is neither handled nor an accepted
// no-op, as a 400 with `param` set to it.
std::optional<Error> CheckFields(const nlohmann::json& body, bool chat);

// The same for one chat message (`index` for the message text).
std::optional<Error> CheckMessageFields(const nlohmann::json& message, size_t index);

}  // namespace pipeinfer::router
