#include "router/openai_fields.h"

#include <algorithm>
#include <span>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace pipeinfer::router {
namespace {

using json = nlohmann::json;

// Parsed by openai_request.cc on both endpoints.
constexpr std::string_view kCommon[] = {"model",
                                        "max_tokens",
                                        "temperature",
                                        "top_p",
                                        "n",
                                        "stream",
                                        "stream_options",
                                        "stop",
                                        "seed",
                                        "presence_penalty",
                                        "frequency_penalty",
                                        "logit_bias",
                                        "logprobs",
                                        "user",
                                        "store",
                                        "service_tier",
                                        "top_k",
                                        "min_p",
                                        "repetition_penalty",
                                        "ignore_eos",
                                        "mode"};
constexpr std::string_view kChatOnly[] = {
    "messages",        "max_completion_tokens", "top_logprobs", "metadata",
    "response_format", "safety_identifier",     "tools",        "functions",
    "tool_choice",     "parallel_tool_calls"};
constexpr std::string_view kCompletionOnly[] = {"prompt", "echo", "suffix", "best_of"};

// OpenAI fields this server does not implement (a 400 saying so when they are not null).
constexpr std::string_view kUnsupportedChat[] = {
    "function_call",      "audio",     "modalities",           "prediction", "reasoning_effort",
    "web_search_options", "verbosity", "prompt_cache_key",     "background", "instructions",
    "reasoning",          "include",   "previous_response_id", "truncation", "text",
    "max_tool_calls"};
constexpr std::string_view kUnsupportedCompletion[] = {
    "messages",      "tools",           "tool_choice",  "functions",
    "function_call", "response_format", "top_logprobs", "max_completion_tokens",
    "metadata",      "audio",           "modalities",   "prediction"};

bool In(std::string_view key, std::span<const std::string_view> list) {
  return std::find(list.begin(), list.end(), key) != list.end();
}

Error NotSupported(const std::string& key, const std::string& why = "") {
  return Invalid(absl::StrCat("'", key, "' is not supported by this server",
                              why.empty() ? "" : absl::StrCat(" (", why, ")")),
                 key);
}

// Fields that are accepted only in their "off" form.
std::optional<Error> CheckToolFields(const json& body) {
  auto present = [&](const char* k) {
    auto it = body.find(k);
    return it != body.end() && !it->is_null();
  };
  for (const char* k : {"tools", "functions"}) {
    if (present(k) && !(body[k].is_array() && body[k].empty())) {
      return NotSupported(k, "no tool or function calling");
    }
  }
  if (present("tool_choice") &&
      !(body["tool_choice"].is_string() && body["tool_choice"] == "none")) {
    return NotSupported("tool_choice", "only \"none\"");
  }
  if (present("parallel_tool_calls")) {
    if (!body["parallel_tool_calls"].is_boolean()) {
      return Invalid("'parallel_tool_calls' must be a boolean", "parallel_tool_calls");
    }
  }
  if (present("response_format")) {
    const json& rf = body["response_format"];
    if (!rf.is_object() || !rf.contains("type") || !rf["type"].is_string()) {
      return Invalid("'response_format' must be an object with a string 'type'", "response_format");
    }
    const std::string type = rf["type"].get<std::string>();
    if (type != "text") {
      return NotSupported("response_format",
                          absl::StrCat("type '", type, "'; only {\"type\": \"text\"}"));
    }
    for (auto it = rf.begin(); it != rf.end(); ++it) {
      if (it.key() != "type") {
        return Invalid(absl::StrCat("unknown field 'response_format.", it.key(), "'"),
                       "response_format");
      }
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<Error> CheckFields(const json& body, bool chat) {
  for (auto it = body.begin(); it != body.end(); ++it) {
    const std::string& key = it.key();
    if (In(key, kCommon) ||
        In(key, chat ? std::span<const std::string_view>(kChatOnly) : kCompletionOnly))
      continue;
    if (In(key,
           chat ? std::span<const std::string_view>(kUnsupportedChat) : kUnsupportedCompletion)) {
      if (it->is_null()) continue;
      return NotSupported(key, chat ? "" : "on /v1/completions");
    }
    return Invalid(absl::StrCat("unknown field '", key, "'"), key);
  }
  if (chat) {
    if (auto e = CheckToolFields(body)) return e;
  } else {
    auto present = [&](const char* k) {
      auto it = body.find(k);
      return it != body.end() && !it->is_null();
    };
    if (present("echo") && !(body["echo"].is_boolean() && !body["echo"].get<bool>())) {
      return NotSupported("echo", "only false");
    }
    if (present("suffix") &&
        !(body["suffix"].is_string() && body["suffix"].get<std::string>().empty())) {
      return NotSupported("suffix", "no insertion");
    }
    if (present("best_of") && !(body["best_of"].is_number_integer() && body["best_of"] == 1)) {
      return NotSupported("best_of", "only 1");
    }
  }
  auto store = body.find("store");
  if (store != body.end() && !store->is_null()) {
    if (!store->is_boolean()) return Invalid("'store' must be a boolean", "store");
    if (store->get<bool>())
      return NotSupported("store", "completions are never stored; false only");
  }
  auto tier = body.find("service_tier");
  if (tier != body.end() && !tier->is_null() &&
      !(tier->is_string() && (*tier == "auto" || *tier == "default"))) {
    return NotSupported("service_tier", "only \"auto\" or \"default\"");
  }
  auto meta = body.find("metadata");
  if (meta != body.end() && !meta->is_null()) {
    if (!meta->is_object()) return Invalid("'metadata' must be an object", "metadata");
    for (auto m = meta->begin(); m != meta->end(); ++m) {
      if (!m->is_string()) return Invalid("'metadata' values must be strings", "metadata");
    }
  }
  return std::nullopt;
}

std::optional<Error> CheckMessageFields(const json& m, size_t index) {
  for (auto it = m.begin(); it != m.end(); ++it) {
    const std::string& key = it.key();
    if (key == "role" || key == "content") continue;
    // An assistant message's refusal / tool calls from an earlier turn, a participant name or a
    // tool call id: null is the same as absent.
    if (key == "name" || key == "tool_calls" || key == "tool_call_id" || key == "function_call" ||
        key == "audio" || key == "refusal") {
      if (it->is_null()) continue;
      return Invalid(
          absl::StrCat("messages[", index, "].", key, " is not supported by this server"),
          "messages");
    }
    return Invalid(absl::StrCat("unknown field 'messages[", index, "].", key, "'"), "messages");
  }
  return std::nullopt;
}

}  // namespace pipeinfer::router
