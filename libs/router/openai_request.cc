#include "router/openai_request.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "router/openai_fields.h"

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

// "logit_bias": {"<token id>": bias in [-100, 100], ...}.
std::optional<Error> ParseLogitBias(const json& body, const RequestBuilder& b, GenRequest* g) {
  auto it = body.find("logit_bias");
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_object()) {
    return Invalid("'logit_bias' must be an object mapping token ids to biases", "logit_bias");
  }
  if (it->size() > 1024) return Invalid("'logit_bias' may hold at most 1024 tokens", "logit_bias");
  const int64_t n_vocab = b.model().tok->n_vocab();
  for (auto e = it->begin(); e != it->end(); ++e) {
    const std::string& key = e.key();
    int64_t id = -1;
    if (!key.empty() && key.size() <= 10 &&
        std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      id = std::stoll(key);
    }
    if (id < 0 || id >= n_vocab) {
      return Invalid(
          absl::StrCat("logit_bias: '", key, "' is not a token id (0 to ", n_vocab - 1, ")"),
          "logit_bias");
    }
    if (!e->is_number()) {
      return Invalid(absl::StrCat("logit_bias: the bias of token ", key, " must be a number"),
                     "logit_bias");
    }
    const double v = e->get<double>();
    if (!(v >= -100.0 && v <= 100.0)) {
      return Invalid(absl::StrCat("logit_bias: the bias of token ", key, " must be in [-100, 100]"),
                     "logit_bias");
    }
    (*g->sampling.mutable_logit_bias())[static_cast<uint32_t>(id)] = static_cast<float>(v);
  }
  return std::nullopt;
}

// Chat: "logprobs": bool, "top_logprobs": 0..20 (only with logprobs). Completions: "logprobs":
// 0..5 alternatives (null = none).
std::optional<Error> ParseLogprobs(const json& body, bool chat, GenRequest* g) {
  if (chat) {
    std::optional<bool> logprobs;
    std::optional<int64_t> top;
    if (auto e = Get(body, "logprobs", &logprobs)) return e;
    if (auto e = Get(body, "top_logprobs", &top)) return e;
    if (top && (*top < 0 || *top > 20)) {
      return Invalid("'top_logprobs' must be in [0, 20]", "top_logprobs");
    }
    if (top && !logprobs.value_or(false)) {
      return Invalid("'top_logprobs' needs 'logprobs' set to true", "top_logprobs");
    }
    if (logprobs.value_or(false)) g->logprobs = static_cast<uint32_t>(top.value_or(0));
    return std::nullopt;
  }
  std::optional<int64_t> n;
  if (auto e = Get(body, "logprobs", &n)) return e;
  if (n && (*n < 0 || *n > 5)) return Invalid("'logprobs' must be in [0, 5]", "logprobs");
  if (n) g->logprobs = static_cast<uint32_t>(*n);
  return std::nullopt;
}

// "stream_options": {"include_usage": bool}, only with "stream": true.
std::optional<Error> ParseStreamOptions(const json& body, HttpOptions* o) {
  auto it = body.find("stream_options");
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_object()) return Invalid("'stream_options' must be an object", "stream_options");
  if (!o->stream) {
    return Invalid("'stream_options' is only allowed when 'stream' is true", "stream_options");
  }
  for (auto e = it->begin(); e != it->end(); ++e) {
    if (e.key() != "include_usage") {
      return Invalid(absl::StrCat("unknown field 'stream_options.", e.key(), "'"),
                     "stream_options");
    }
    if (e->is_null()) continue;
    if (!e->is_boolean()) {
      return Invalid("'stream_options.include_usage' must be a boolean", "stream_options");
    }
    o->include_usage = e->get<bool>();
  }
  return std::nullopt;
}

// Extension "mode": the speculation mode of this request.
std::optional<Error> ParseMode(const json& body, GenRequest* g) {
  std::optional<std::string> mode;
  if (auto e = Get(body, "mode", &mode)) return e;
  if (!mode) return std::nullopt;
  if (*mode == "plain") {
    g->spec.set_mode(v1::SPEC_MODE_PLAIN);
  } else if (*mode == "sync") {
    g->spec.set_mode(v1::SPEC_MODE_SYNC);
  } else if (*mode == "pipeinfer") {
    g->spec.set_mode(v1::SPEC_MODE_PIPEINFER);
  } else {
    return Invalid(
        absl::StrCat("'mode' must be \"plain\", \"sync\" or \"pipeinfer\", got \"", *mode, "\""),
        "mode");
  }
  return std::nullopt;
}

// "user" (and "safety_identifier"): a printable string of at most 256 bytes, for the access log.
std::optional<Error> ParseUser(const json& body, GenRequest* g) {
  for (const char* key : {"user", "safety_identifier"}) {
    std::optional<std::string> user;
    if (auto e = Get(body, key, &user)) return e;
    if (!user) continue;
    if (user->size() > 256 ||
        !std::all_of(user->begin(), user->end(), [](char c) { return c >= 0x20 && c != 0x7f; })) {
      return Invalid(
          absl::StrCat("'", key, "' must be at most 256 bytes without control characters"), key);
    }
    if (g->user.empty()) g->user = *user;
  }
  return std::nullopt;
}

// Sampling fields -> g->sampling, checked.
std::optional<Error> ParseSampling(const json& body, const RequestBuilder& b, GenRequest* g) {
  std::optional<int64_t> seed, top_k;
  std::optional<double> temperature, top_p, min_p, repetition_penalty, frequency_penalty,
      presence_penalty;
  if (auto e = Get(body, "temperature", &temperature)) return e;
  if (auto e = Get(body, "top_p", &top_p)) return e;
  if (auto e = Get(body, "top_k", &top_k)) return e;
  if (auto e = Get(body, "min_p", &min_p)) return e;
  if (auto e = Get(body, "repetition_penalty", &repetition_penalty)) return e;
  if (auto e = Get(body, "frequency_penalty", &frequency_penalty)) return e;
  if (auto e = Get(body, "presence_penalty", &presence_penalty)) return e;
  if (auto e = Get(body, "seed", &seed)) return e;
  g->sampling.set_temperature(static_cast<float>(temperature.value_or(1.0)));
  if (top_p) g->sampling.set_top_p(static_cast<float>(*top_p));
  if (top_k) {
    if (*top_k < 0 || *top_k > 1000000000) return Invalid("top_k must be >= 0", "top_k");
    g->sampling.set_top_k(static_cast<int32_t>(*top_k));
  }
  if (min_p) g->sampling.set_min_p(static_cast<float>(*min_p));
  if (repetition_penalty) {
    g->sampling.set_repetition_penalty(static_cast<float>(*repetition_penalty));
  }
  if (frequency_penalty) g->sampling.set_frequency_penalty(static_cast<float>(*frequency_penalty));
  if (presence_penalty) g->sampling.set_presence_penalty(static_cast<float>(*presence_penalty));
  if (seed) g->sampling.set_seed(static_cast<uint64_t>(*seed));
  if (auto e = ParseLogitBias(body, b, g)) return e;
  if (auto e = b.CheckSampling(g->sampling)) {
    const std::string& m = e->message;
    for (const char* p : {"temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                          "frequency_penalty", "presence_penalty", "logit_bias"}) {
      if (m.rfind(p, 0) == 0) e->param = p;
    }
    return e;
  }
  return std::nullopt;
}

// Common OpenAI fields -> GenRequest.
std::optional<Error> ParseCommon(const json& body, bool chat, const RequestBuilder& b,
                                 GenRequest* g, HttpOptions* o) {
  if (auto e = CheckFields(body, chat)) return e;
  std::optional<std::string> model;
  if (auto e = Get(body, "model", &model)) return e;
  if (auto e = b.CheckModel(model.value_or(""))) return e;
  std::optional<int64_t> n, max_tokens, max_completion_tokens;
  std::optional<bool> stream_opt, ignore_eos;
  if (auto e = Get(body, "n", &n)) return e;
  if (n && *n != 1) return Invalid("'n' is not supported by this server (only n = 1)", "n");
  if (auto e = Get(body, "max_tokens", &max_tokens)) return e;
  if (auto e = Get(body, "max_completion_tokens", &max_completion_tokens)) return e;
  if (max_completion_tokens) max_tokens = max_completion_tokens;
  if (max_tokens) {
    if (*max_tokens < 1) {
      return Invalid(absl::StrCat("max_tokens must be >= 1, got ", *max_tokens), "max_tokens");
    }
    // More than the whole context (1e12, beyond 32 bits, included) can never fit: refused with
    // the real bound and CheckContext's code.
    if (*max_tokens > int64_t{b.n_ctx()}) {
      return Error{
          absl::StatusCode::kOutOfRange,
          absl::StrCat("max_tokens must be at most this model's maximum context length of ",
                       b.n_ctx(), " tokens (prompt included), got ", *max_tokens),
          "max_tokens", "context_length_exceeded"};
    }
    g->max_tokens = static_cast<uint32_t>(*max_tokens);
  }
  if (auto e = Get(body, "stream", &stream_opt)) return e;
  o->stream = stream_opt.value_or(false);
  if (auto e = ParseStreamOptions(body, o)) return e;
  if (auto e = Get(body, "ignore_eos", &ignore_eos)) return e;
  g->ignore_eos = ignore_eos.value_or(false);
  if (auto e = ParseSampling(body, b, g)) return e;
  if (auto e = ParseLogprobs(body, chat, g)) return e;
  if (auto e = ParseMode(body, g)) return e;
  if (auto e = ParseUser(body, g)) return e;
  auto it = body.find("stop");
  if (it != body.end() && !it->is_null()) {
    std::vector<std::string> stops;
    if (it->is_string()) {
      stops.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      for (const auto& s : *it) {
        if (!s.is_string())
          return Invalid("'stop' must be a string or an array of strings", "stop");
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
  size_t index = 0;
  for (const auto& m : *it) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      return Invalid("each message must be an object with a string 'role'", "messages");
    }
    if (auto e = CheckMessageFields(m, index++)) return e;
    std::string content;
    if (m.contains("content") && !m["content"].is_null()) {
      const auto& c = m["content"];
      if (c.is_string()) {
        content = c.get<std::string>();
      } else if (c.is_array()) {
        for (const auto& part : c) {
          if (!part.is_object() || !part.contains("text") || !part["text"].is_string() ||
              (part.contains("type") && part["type"] != "text")) {
            return Invalid("only text content parts are supported", "messages");
          }
          for (auto f = part.begin(); f != part.end(); ++f) {
            if (f.key() != "type" && f.key() != "text") {
              return Invalid(absl::StrCat("unknown field '", f.key(), "' in a content part"),
                             "messages");
            }
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
                                        HttpOptions* options) {
  json body;
  try {
    body = json::parse(body_text);
  } catch (const std::exception& ex) {
    return Invalid(absl::StrCat("We could not parse the JSON body of your request: ", ex.what()));
  }
  if (!body.is_object()) return Invalid("the request body must be a JSON object");
  try {
    if (auto e = ParseCommon(body, chat, builder, g, options)) return e;
    if (auto e = chat ? ParseMessages(body, builder, g) : ParsePrompt(body, builder, g)) return e;
    return builder.CheckContext(g);
  } catch (const std::exception& ex) {
    return Invalid(absl::StrCat("invalid request: ", ex.what()));
  }
}

}  // namespace pipeinfer::router
