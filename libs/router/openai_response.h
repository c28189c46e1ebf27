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
};

// "length" or "stop".
std::string FinishName(v1::FinishReason r);

// The non-streamed answer.
nlohmann::json CompletionBody(const AnswerHeader& h, const std::string& text, const GenResult& r);

// One streamed chunk; `delta_or_text` is the chat delta object or the completion text, `finish`
// null or a finish reason name.
nlohmann::json ChunkBody(const AnswerHeader& h, const nlohmann::json& delta_or_text,
                         const nlohmann::json& finish);

// The last chunk: finish reason and usage.
nlohmann::json LastChunkBody(const AnswerHeader& h, const GenResult& r);

// "data: <json>\n\n".
std::string SseEvent(const nlohmann::json& j);

}  // namespace pipeinfer::router
