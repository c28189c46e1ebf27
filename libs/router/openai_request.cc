#include "router/openai_request.h"

#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace pipeinfer::router {
namespace {

using json = nlohmann::json;

// Reads an optional field of a JSON type; an error for the wrong type.
template <typename T>
std::optional<Error> Get(const json& body, const char* key, std::optional<T>* out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if constexpr (std::is_same_v<T, bool>) {
    if (!it->is_boolean()) return Invalid(absl::StrCat("'", key, "' must be a boolean"), key);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!it->is_string()) return Invalid(absl::StrCat("'", key, "' must be a string"), key);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!it->is_number()) return Invalid(absl::StrCat("'", key, "' must be a number"), key);
  } else {
    if (!it->is_number_integer()) {
      return Invalid(absl::StrCat("'", key, "' must be an integer"), key);
    }
  }
  *out = it->get<T>();
  return std::nullopt;
}

// Common OpenAI fields -> GenRequest.
std::optional<Error> ParseCommon(const json& body, bool chat, const RequestBuilder& b,
                                 GenRequest* g, bool* stream) {
  std::optional<std::string> model;
  if (auto e = Get(body, "model", &model)) return e;
  if (auto e = b.CheckModel(model.value_or(""))) return e;
  std::optional<int64_t> n, max_tokens, max_completion_tokens, seed, top_k;
  std::optional<double> temperature, top_p, repetition_penalty;
  std::optional<bool> stream_opt;
  if (auto e = Get(body, "n", &n)) return e;
  if (n && *n != 1) return Invalid("only n = 1 is supported", "n");
  if (auto e = Get(body, "max_tokens", &max_tokens)) return e;
  if (auto e = Get(body, "max_completion_tokens", &max_completion_tokens)) return e;
  if (max_completion_tokens) max_tokens = max_completion_tokens;
  if (max_tokens) {
    if (*max_tokens < 1 || *max_tokens > 0xffffffffLL) {
      return Invalid("max_tokens must be >= 1", "max_tokens");
    }
    g->max_tokens = static_cast<uint32_t>(*max_tokens);
  }
  if (auto e = Get(body, "temperature", &temperature)) return e;
  if (auto e = Get(body, "top_p", &top_p)) return e;
  if (auto e = Get(body, "top_k", &top_k)) return e;
  if (auto e = Get(body, "repetition_penalty", &repetition_penalty)) return e;
  if (auto e = Get(body, "seed", &seed)) return e;
  if (auto e = Get(body, "stream", &stream_opt)) return e;
  *stream = stream_opt.value_or(false);
  g->sampling.set_temperature(static_cast<float>(temperature.value_or(1.0)));
  if (top_p) g->sampling.set_top_p(static_cast<float>(*top_p));
  if (top_k) {
    if (*top_k < 0 || *top_k > 1000000000) return Invalid("top_k must be >= 0", "top_k");
    g->sampling.set_top_k(static_cast<int32_t>(*top_k));
  }
  if (repetition_penalty) {
    g->sampling.set_repetition_penalty(static_cast<float>(*repetition_penalty));
  }
  if (seed) g->sampling.set_seed(static_cast<uint64_t>(*seed));
  if (auto e = b.CheckSampling(g->sampling)) {
    const std::string& m = e->message;
    for (const char* p : {"temperature", "top_p", "top_k", "repetition_penalty"}) {
      if (m.rfind(p, 0) == 0) e->param = p;
    }
    return e;
  }
  auto it = body.find("stop");
  if (it != body.end() && !it->is_null()) {
    std::vector<std::string> stops;
    if (it->is_string()) {
      stops.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      for (const auto& s : *it) {
        if (!s.is_string()) return Invalid("'stop' must be a string or an array of strings");
        stops.push_back(s.get<std::string>());
      }
    } else {
      return Invalid("'stop' must be a string or an array of strings", "stop");
    }
    if (auto e = b.AddStops(stops, g)) return e;
  }
  g->request_id = RandomId(chat ? "chatcmpl-" : "cmpl-");
  return std::nullopt;
}

// "messages": [{"role", "content": string | [{"type": "text", "text"}]}].
std::optional<Error> ParseMessages(const json& body, const RequestBuilder& b, GenRequest* g) {
  auto it = body.find("messages");
  if (it == body.end() || !it->is_array()) {
    return Invalid("'messages' must be an array of messages", "messages");
  }
  std::vector<chat::ChatMessage> msgs;
  for (const auto& m : *it) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      return Invalid("each message must be an object with a string 'role'", "messages");
    }
    std::string content;
    if (m.contains("content") && !m["content"].is_null()) {
      const auto& c = m["content"];
      if (c.is_string()) {
        content = c.get<std::string>();
      } else if (c.is_array()) {
        for (const auto& part : c) {
          if (!part.is_object() || !part.contains("text") || !part["text"].is_string()) {
            return Invalid("only text content parts are supported", "messages");
          }
          content += part["text"].get<std::string>();
        }
      } else {
        return Invalid("message 'content' must be a string", "messages");
      }
    }
    const std::string role = m["role"].get<std::string>();
    if (role != "system" && role != "user" && role != "assistant") {
      return Invalid(absl::StrCat("unsupported role '", role, "' (system, user or assistant)"),
                     "messages");
    }
    msgs.push_back({role, std::move(content)});
  }
  // The template's stop strings come first, then the client's.
  std::vector<std::string> client_stops = std::move(g->stops);
  g->stops.clear();
  auto err = b.BuildChat(msgs, "", g);
  for (auto& s : client_stops) g->stops.push_back(std::move(s));
  return err;
}

// "prompt": a string, one string in an array, or an array of token ids.
std::optional<Error> ParsePrompt(const json& body, const RequestBuilder& b, GenRequest* g) {
  auto it = body.find("prompt");
  std::string prompt;
  if (it == body.end() || it->is_null()) {
    return Invalid("'prompt' is required", "prompt");
  } else if (it->is_string()) {
    prompt = it->get<std::string>();
  } else if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) {
    prompt = (*it)[0].get<std::string>();
  } else if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) {
    const int64_t n_vocab = b.model().tok->n_vocab();
    for (const auto& v : *it) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= n_vocab) {
        return Invalid("token ids in 'prompt' must be integers < n_vocab", "prompt");
      }
      g->prompt.push_back(v.get<uint32_t>());
    }
    return std::nullopt;
  } else {
    return Invalid("'prompt' must be a string (or one string, or an array of token ids)", "prompt");
  }
  return b.EncodePrompt(prompt, b.model().tok->add_bos(), /*parse_special=*/false, g);
}

}  // namespace

std::optional<Error> ParseOpenAiRequest(const std::string& body_text, bool chat,
                                        const RequestBuilder& builder, GenRequest* g,
                                        bool* stream) {
  json body;
  try {
    body = json::parse(body_text);
  } catch (const std::exception& ex) {
    return Invalid(absl::StrCat("We could not parse the JSON body of your request: ", ex.what()));
  }
  if (!body.is_object()) return Invalid("the request body must be a JSON object");
  try {
    if (auto e = ParseCommon(body, chat, builder, g, stream)) return e;
    if (auto e = chat ? ParseMessages(body, builder, g) : ParsePrompt(body, builder, g)) return e;
    return builder.CheckContext(g);
  } catch (const std::exception& ex) {
    return Invalid(absl::StrCat("invalid request: ", ex.what()));
  }
}

}  // namespace pipeinfer::router
