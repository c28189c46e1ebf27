#include "router/request_builder.h"

#include <atomic>
#include <cstdio>
#include <random>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "pipeinfer/v1/router.pb.h"
#include "sampling/sampling.h"
#include "tokenizer/utf8.h"

namespace pipeinfer::router {

RequestBuilder::RequestBuilder(const ServedModel& model, uint32_t n_ctx, size_t max_prompt_bytes,
                               bool explicit_bound)
    : model_(model),
      n_ctx_(n_ctx),
      max_prompt_bytes_(max_prompt_bytes),
      explicit_bound_(explicit_bound) {}

std::optional<Error> RequestBuilder::CheckModel(const std::string& model) const {
  if (!model.empty() && model != model_.id) {
    return Error{absl::StatusCode::kNotFound,
                 absl::StrCat("The model '", model, "' does not exist (served: ", model_.id, ")"),
                 "model", "model_not_found"};
  }
  return std::nullopt;
}

std::optional<Error> RequestBuilder::SetRequestId(const std::string& id, GenRequest* g) const {
  if (id.size() > 128) return Invalid("request_id is longer than 128 characters", "request_id");
  for (char c : id) {
    if (c < 0x20 || c > 0x7e) return Invalid("request_id must be printable ASCII");
  }
  g->request_id = id.empty() ? RandomId("req-") : id;
  return std::nullopt;
}

std::optional<Error> RequestBuilder::CheckPromptBytes(size_t bytes, const char* param) const {
  if (max_prompt_bytes_ == 0 || bytes <= max_prompt_bytes_) return std::nullopt;
  const std::string why =
      explicit_bound_ ? std::string("the router's --max-prompt-chars")
                      : absl::StrCat("the most text that can fit in this model's context of ",
                                     n_ctx_, " tokens");
  return Error{absl::StatusCode::kOutOfRange,
               absl::StrCat("The prompt is too long: ", bytes, " bytes of text, more than ",
                            max_prompt_bytes_, " (", why, ")."),
               param, "context_length_exceeded"};
}

std::optional<Error> RequestBuilder::BuildChat(const std::vector<chat::ChatMessage>& msgs,
                                               const std::string& template_name,
                                               GenRequest* g) const {
  if (msgs.empty()) return Invalid("messages must not be empty", "messages");
  for (const auto& m : msgs) {
    if (!tokenizer::IsValidUtf8(m.content)) {
      return Invalid("message content is not valid UTF-8", "messages");
    }
  }
  // The served template (the GGUF's through the Jinja interpreter, or --chat-template's); a
  // request may name a built-in format, or pass a Jinja text whose family selects one.
  const chat::ModelTemplate* t = &model_.chat_template;
  std::optional<chat::ModelTemplate> requested;
  if (!template_name.empty()) {
    auto named = chat::TemplateByName(template_name);
    if (!named) {
      auto detected = chat::TryDetectTemplate(template_name);
      if (!detected) {
        return Invalid(absl::StrCat("unknown chat template '", template_name, "'"),
                       "chat_template");
      }
      named = detected;
    }
    requested = chat::ModelTemplate::Builtin(*named);
    t = &*requested;
  }
  std::vector<chat::TextRange> content;
  auto text = t->Render(msgs, /*add_generation_prompt=*/true, &content);
  if (!text.ok()) return Invalid(S(text.status().message()), "messages");
  // The bound counts the whole rendered text: every message's content plus the template's.
  if (auto e = CheckPromptBytes(text->size(), "messages")) return e;
  // The template's own markers are control tokens; the same text inside a message is not.
  std::vector<std::pair<size_t, size_t>> literal;
  for (const chat::TextRange& r : content) literal.emplace_back(r.offset, r.length);
  const tokenizer::Tokenizer& tok = *model_.tok;
  for (int32_t id : tok.Encode(*text, tok.add_bos(), /*parse_special=*/true, literal)) {
    g->prompt.push_back(static_cast<uint32_t>(id));
  }
  g->stops = t->StopStrings();
  return std::nullopt;
}

std::optional<Error> RequestBuilder::EncodePrompt(const std::string& text, bool add_bos,
                                                  bool parse_special, GenRequest* g) const {
  if (!tokenizer::IsValidUtf8(text)) return Invalid("prompt is not valid UTF-8", "prompt");
  if (auto e = CheckPromptBytes(text.size(), "prompt")) return e;
  for (int32_t id : model_.tok->Encode(text, add_bos, parse_special)) {
    g->prompt.push_back(static_cast<uint32_t>(id));
  }
  return std::nullopt;
}

std::optional<Error> RequestBuilder::AddStops(const std::vector<std::string>& stops,
                                              GenRequest* g) const {
  if (stops.size() > 4) return Invalid("at most 4 stop sequences are allowed", "stop");
  for (const auto& s : stops) {
    if (s.empty() || s.size() > 256) {
      return Invalid("each stop sequence must be 1..256 bytes", "stop");
    }
    if (!tokenizer::IsValidUtf8(s)) return Invalid("stop is not valid UTF-8", "stop");
    g->stops.push_back(s);
  }
  return std::nullopt;
}

std::optional<Error> RequestBuilder::CheckSampling(const v1::SamplingParams& p) const {
  sampling::SamplingParams sp;
  if (p.has_temperature()) sp.temperature = p.temperature();
  if (p.has_top_k()) sp.top_k = p.top_k();
  if (p.has_top_p()) sp.top_p = p.top_p();
  if (p.has_min_p()) sp.min_p = p.min_p();
  if (p.has_repetition_penalty()) sp.repetition_penalty = p.repetition_penalty();
  if (p.has_repeat_last_n()) sp.repeat_last_n = p.repeat_last_n();
  if (p.has_frequency_penalty()) sp.frequency_penalty = p.frequency_penalty();
  if (p.has_presence_penalty()) sp.presence_penalty = p.presence_penalty();
  const uint32_t n_vocab = static_cast<uint32_t>(model_.tok->n_vocab());
  for (const auto& [id, bias] : p.logit_bias()) {
    if (id >= n_vocab) {
      return Invalid(absl::StrCat("logit_bias: token id ", id,
                                  " is not in the vocabulary (n_vocab ", n_vocab, ")"),
                     "logit_bias");
    }
    sp.logit_bias.emplace_back(static_cast<int32_t>(id), bias);
  }
  const absl::Status st = sampling::Validate(sp);
  if (!st.ok()) return Invalid(S(st.message()));
  return std::nullopt;
}

std::optional<Error> RequestBuilder::FromOptions(const v1::GenerationOptions& o,
                                                 GenRequest* g) const {
  if (o.has_max_tokens()) {
    if (o.max_tokens() < 1) return Invalid("max_tokens must be >= 1", "max_tokens");
    g->max_tokens = o.max_tokens();
  }
  if (auto e = CheckSampling(o.sampling())) return e;
  g->sampling = o.sampling();
  if (auto e = AddStops({o.stop().begin(), o.stop().end()}, g)) return e;
  for (uint32_t id : o.stop_token_ids()) g->stop_token_ids.push_back(id);
  g->ignore_eos = o.ignore_eos();
  g->spec = o.spec();
  return std::nullopt;
}

std::optional<Error> RequestBuilder::CheckContext(GenRequest* g) const {
  if (g->prompt.empty()) return Invalid("the prompt is empty", "prompt");
  const uint64_t n = g->prompt.size();
  if (n >= n_ctx_) {
    return Error{absl::StatusCode::kOutOfRange,
                 absl::StrCat("This model's maximum context length is ", n_ctx_,
                              " tokens. However, your prompt has ", n, " tokens."),
                 "messages", "context_length_exceeded"};
  }
  const uint32_t room = static_cast<uint32_t>(n_ctx_ - n);
  if (!g->max_tokens) {
    g->max_tokens = room;
  } else if (*g->max_tokens > room) {
    // Refused on HTTP and gRPC alike (as OpenAI does), never clamped.
    return Error{absl::StatusCode::kOutOfRange,
                 absl::StrCat("This model's maximum context length is ", n_ctx_,
                              " tokens. However, you requested ", n + *g->max_tokens, " tokens (",
                              n, " in the prompt, ", *g->max_tokens, " for the completion)."),
                 "max_tokens", "context_length_exceeded"};
  }
  return std::nullopt;
}

std::string RandomId(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng(std::random_device{}() ^
                                   std::hash<std::thread::id>()(std::this_thread::get_id()));
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(rng() ^ counter++));
  return std::string(prefix) + buf;
}

}  // namespace pipeinfer::router
