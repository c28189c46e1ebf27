#include "chat/model_template.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pipeinfer::chat {
namespace {

constexpr std::string_view kKnown = "chatml, llama2, mistral, zephyr, llama3, plain";

std::string UseOverride() {
  return jinja::Cat("; pass --chat-template NAME to use a built-in format instead (", kKnown, ")");
}

jinja::Value MessagesValue(std::span<const ChatMessage> messages) {
  jinja::List list;
  for (const ChatMessage& m : messages) {
    list.push_back(jinja::Value::DictOf(
        {{"role", jinja::Value::Str(m.role)}, {"content", jinja::Value::Content(m.content)}}));
  }
  return jinja::Value::ListOf(std::move(list));
}

}  // namespace

ModelTemplate ModelTemplate::Builtin(TemplateId id) {
  ModelTemplate t;
  t.id_ = id;
  return t;
}

absl::StatusOr<ModelTemplate> ModelTemplate::FromJinja(std::string source, TemplateTokens tokens) {
  auto parsed = jinja::Template::Parse(std::move(source));
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(jinja::Cat(
        "cannot use the model's chat template: ", parsed.status().message(), UseOverride()));
  }
  ModelTemplate t;
  t.jinja_ = std::move(*parsed);
  t.tokens_ = std::move(tokens);
  // Probe conversations: every one must avoid features outside the subset; the first must render.
  const std::vector<std::vector<ChatMessage>> probes = {
      {{"user", "Hello"}},
      {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Bye"}},
      {{"user", "Hi"}, {"assistant", "Hello."}, {"user", "Bye"}},
  };
  for (size_t i = 0; i < probes.size(); ++i) {
    for (bool gen : {true, false}) {
      auto r = t.Render(probes[i], gen);
      if (r.ok()) continue;
      if (i == 0 || absl::IsUnimplemented(r.status())) {
        return absl::InvalidArgumentError(
            jinja::Cat("cannot use the model's chat template: rendering a test conversation "
                       "failed: ",
                       r.status().message(), UseOverride()));
      }
    }
  }
  return t;
}

absl::StatusOr<ModelTemplate> ModelTemplate::Select(std::string_view override_name,
                                                    const std::optional<std::string>& gguf_template,
                                                    TemplateTokens tokens) {
  if (!override_name.empty()) {
    auto id = TemplateByName(override_name);
    if (!id) {
      return absl::InvalidArgumentError(jinja::Cat("unknown chat template '", override_name,
                                                   "' given to --chat-template (known: ", kKnown,
                                                   ")"));
    }
    ModelTemplate t = Builtin(*id);
    t.note_ = " (--chat-template)";
    return t;
  }
  if (!gguf_template || gguf_template->empty()) {
    ModelTemplate t = Builtin(TemplateId::kChatml);
    t.note_ = " (the model has no tokenizer.chat_template; --chat-template chooses another)";
    return t;
  }
  return FromJinja(*gguf_template, std::move(tokens));
}

absl::StatusOr<std::string> ModelTemplate::Render(std::span<const ChatMessage> messages,
                                                  bool add_generation_prompt,
                                                  std::vector<TextRange>* content_ranges) const {
  if (!jinja_) return chat::Render(id_, messages, add_generation_prompt, content_ranges);
  if (messages.empty()) return absl::InvalidArgumentError("messages must not be empty");
  return RenderValues(MessagesValue(messages), add_generation_prompt, {}, content_ranges);
}

absl::StatusOr<std::string> ModelTemplate::RenderValues(
    const jinja::Value& messages, bool add_generation_prompt, const jinja::Dict& extra,
    std::vector<TextRange>* content_ranges) const {
  if (content_ranges) content_ranges->clear();
  if (messages.kind != jinja::Kind::kList) {
    return absl::InvalidArgumentError("messages must be a list");
  }
  if (!jinja_) {
    if (!extra.empty()) {
      return absl::InvalidArgumentError(jinja::Cat(
          "the built-in ", TemplateName(id_), " template takes no variables besides messages"));
    }
    std::vector<ChatMessage> msgs;
    for (size_t i = 0; i < messages.list->size(); ++i) {
      const jinja::Value& m = (*messages.list)[i];
      const jinja::Value* role = m.Find("role");
      const jinja::Value* content = m.Find("content");
      if (!role || !role->is_string() ||
          (content && !content->is_string() && content->kind != jinja::Kind::kNone)) {
        return absl::InvalidArgumentError(jinja::Cat(
            "messages[", i, "]: the built-in templates need a string role and string content"));
      }
      msgs.push_back({role->s, content && content->is_string() ? content->s : ""});
    }
    return chat::Render(id_, msgs, add_generation_prompt, content_ranges);
  }
  jinja::Dict ctx = {{"messages", messages},
                     {"add_generation_prompt", jinja::Value::Bool(add_generation_prompt)},
                     {"bos_token", jinja::Value::Str(tokens_.bos)},
                     {"eos_token", jinja::Value::Str(tokens_.eos)}};
  for (const auto& kv : extra) ctx.push_back(kv);
  std::vector<jinja::Mark> marks;
  auto text = jinja_->Render(ctx, content_ranges ? &marks : nullptr);
  if (!text.ok()) return text.status();
  size_t cut = 0;
  if (tokens_.strip_leading_bos && !tokens_.bos.empty() && text->starts_with(tokens_.bos)) {
    cut = tokens_.bos.size();
    text->erase(0, cut);
  }
  if (content_ranges) {
    for (const jinja::Mark& m : marks) {
      if (m.offset + m.length <= cut) continue;
      const size_t b = std::max(m.offset, cut);
      content_ranges->push_back({b - cut, m.offset + m.length - b});
    }
  }
  return std::move(*text);
}

std::vector<std::string> ModelTemplate::StopStrings() const {
  if (!jinja_) return chat::StopStrings(id_);
  std::vector<std::string> out;
  const std::string& src = jinja_->source();
  for (const char* marker :
       {"<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>"}) {
    if (src.find(marker) != std::string::npos) out.emplace_back(marker);
  }
  if (!tokens_.eos.empty() && src.find("eos_token") != std::string::npos) {
    bool have = false;
    for (const auto& s : out) have = have || s == tokens_.eos;
    if (!have) out.push_back(tokens_.eos);
  }
  return out;
}

std::string ModelTemplate::Describe() const {
  if (!jinja_) return jinja::Cat("built-in ", TemplateName(id_), note_);
  std::string d =
      jinja::Cat("the model's tokenizer.chat_template (Jinja, ", jinja_->source().size(), " bytes");
  if (auto family = TryDetectTemplate(jinja_->source())) {
    d += jinja::Cat("; ", TemplateName(*family), " family");
  }
  return d + ")";
}

}  // namespace pipeinfer::chat
