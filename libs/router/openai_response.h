// OpenAI response bodies: a whole chat.completion / text_completion object, the chunks of a
// streamed answer (chat.completion.chunk / text_completion) and their SSE framing.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "router/gen_request.h"

namespace pipeinfer::router {

// What every object of one answer repeats.
struct AnswerHeader {
  bool chat = false;
  std::string id;
  int64_t created = 0;  // unix seconds
  std::string model;
  std::string fingerprint;     // system_fingerprint, in every object
  bool logprobs = false;       // choices carry a logprobs object (else null)
  bool include_usage = false;  // stream_options.include_usage
};

// "length" or "stop".
std::string FinishName(v1::FinishReason r);

// The non-streamed answer; `logprobs` the choice's logprobs object (null when not asked for).
nlohmann::json CompletionBody(const AnswerHeader& h, const std::string& text, const GenResult& r,
                              const nlohmann::json& logprobs);

// One streamed chunk; `delta_or_text` is the chat delta object or the completion text, `finish`
// null or a finish reason name, `logprobs` the logprobs of this chunk's tokens (or null).
nlohmann::json ChunkBody(const AnswerHeader& h, const nlohmann::json& delta_or_text,
                         const nlohmann::json& finish, const nlohmann::json& logprobs);

// The finish chunk: the finish reason, and the usage unless include_usage (then "usage": null,
// and the usage comes in UsageChunkBody).
nlohmann::json LastChunkBody(const AnswerHeader& h, const GenResult& r);

// stream_options.include_usage: the chunk after the finish chunk, with empty choices and the
// usage (OpenAI's semantics).
nlohmann::json UsageChunkBody(const AnswerHeader& h, const GenResult& r);

// "data: <json>\n\n".
std::string SseEvent(const nlohmann::json& j);

}  // namespace pipeinfer::router
