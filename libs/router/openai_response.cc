#include "router/openai_response.h"

#include <nlohmann/json.hpp>

#include "router/error.h"

namespace pipeinfer::router {
namespace {

using json = nlohmann::json;

json Usage(const GenResult& r) {
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", r.completion_tokens},
          {"total_tokens", r.prompt_tokens + r.completion_tokens}};
}

}  // namespace

std::string FinishName(v1::FinishReason r) {
  return r == v1::FINISH_REASON_LENGTH ? "length" : "stop";
}

json CompletionBody(const AnswerHeader& h, const std::string& text, const GenResult& r,
                    const json& logprobs) {
  json choice{{"index", 0}, {"finish_reason", FinishName(r.finish)}};
  if (h.chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = logprobs;
  return json{{"id", h.id},
              {"object", h.chat ? "chat.completion" : "text_completion"},
              {"created", h.created},
              {"model", h.model},
              {"system_fingerprint", h.fingerprint},
              {"choices", json::array({choice})},
              {"usage", Usage(r)}};
}

json ChunkBody(const AnswerHeader& h, const json& delta_or_text, const json& finish,
               const json& logprobs) {
  json choice{{"index", 0}, {"finish_reason", finish}};
  if (h.chat) {
    choice["delta"] = delta_or_text;
  } else {
    choice["text"] = delta_or_text;
  }
  choice["logprobs"] = logprobs;
  json chunk{{"id", h.id},
             {"object", h.chat ? "chat.completion.chunk" : "text_completion"},
             {"created", h.created},
             {"model", h.model},
             {"system_fingerprint", h.fingerprint},
             {"choices", json::array({choice})}};
  if (h.include_usage) chunk["usage"] = nullptr;
  return chunk;
}

json LastChunkBody(const AnswerHeader& h, const GenResult& r) {
  json last = ChunkBody(h, h.chat ? json::object() : json(""), FinishName(r.finish), nullptr);
  if (!h.include_usage) last["usage"] = Usage(r);
  return last;
}

json UsageChunkBody(const AnswerHeader& h, const GenResult& r) {
  json chunk = ChunkBody(h, json::object(), nullptr, nullptr);
  chunk["choices"] = json::array();
  chunk["usage"] = Usage(r);
  return chunk;
}

std::string SseEvent(const json& j) { return "data: " + Dump(j) + "\n\n"; }

}  // namespace pipeinfer::router
