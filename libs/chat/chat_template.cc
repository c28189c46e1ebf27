#include "chat/chat_template.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pipeinfer::chat {
namespace {

enum class Role { kSystem, kUser, kAssistant };

bool ParseRole(const std::string& role, Role* out) {
  if (role == "system") {
    *out = Role::kSystem;
  } else if (role == "user") {
    *out = Role::kUser;
  } else if (role == "assistant") {
    *out = Role::kAssistant;
  } else {
    return false;
  }
  return true;
}

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// Surrounding ASCII whitespace removed (Python's str.strip() / Jinja's trim on ASCII text).
std::string Trim(const std::string& s) {
  size_t begin = 0, end = s.size();
  while (begin < end && IsSpace(s[begin])) ++begin;
  while (end > begin && IsSpace(s[end - 1])) --end;
  return s.substr(begin, end - begin);
}

struct Turn {
  Role role;
  const std::string* content;
};

// Appends message content to `out`, recording its byte range (so that special-token text in it
// can be tokenized as plain text).
struct Content {
  std::string& out;
  std::vector<TextRange>* ranges;
  void operator()(const std::string& text) const {
    if (ranges && !text.empty()) ranges->push_back({out.size(), text.size()});
    out += text;
  }
};

void RenderChatml(std::span<const Turn> turns, std::span<const ChatMessage> msgs, bool gen,
                  std::string& out, const Content& content) {
  for (size_t i = 0; i < turns.size(); ++i) {
    absl::StrAppend(&out, "<|im_start|>", msgs[i].role, "\n");
    content(*turns[i].content);
    out += "<|im_end|>\n";
  }
  if (gen) out += "<|im_start|>assistant\n";
}

void RenderLlama3(std::span<const Turn> turns, std::span<const ChatMessage> msgs, bool gen,
                  std::string& out, const Content& content) {
  for (size_t i = 0; i < turns.size(); ++i) {
    absl::StrAppend(&out, "<|start_header_id|>", msgs[i].role, "<|end_header_id|>\n\n");
    content(Trim(*turns[i].content));
    out += "<|eot_id|>";
  }
  if (gen) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
}

void RenderZephyr(std::span<const Turn> turns, std::span<const ChatMessage> msgs, bool gen,
                  std::string& out, const Content& content) {
  for (size_t i = 0; i < turns.size(); ++i) {
    absl::StrAppend(&out, "<|", msgs[i].role, "|>\n");
    content(*turns[i].content);
    out += "</s>\n";
  }
  if (gen) out += "<|assistant|>\n";
}

void RenderPlain(std::span<const Turn> turns, bool gen, std::string& out, const Content& content) {
  for (const Turn& t : turns) {
    switch (t.role) {
      case Role::kSystem:
        content(*t.content);
        out += "\n\n";
        break;
      case Role::kUser:
        out += "User: ";
        content(*t.content);
        out += "\n";
        break;
      case Role::kAssistant:
        out += "Assistant: ";
        content(*t.content);
        out += "\n";
        break;
    }
  }
  if (gen) out += "Assistant:";
}

// llama2 and mistral: [INST] turns, the system prompt merged into the next user turn.
absl::Status RenderInst(bool llama2, std::span<const Turn> turns, std::string& out,
                        const Content& emit) {
  const char* name = llama2 ? "llama2" : "mistral";
  std::string system;  // pending system prompt
  bool have_system = false;
  for (const Turn& t : turns) {
    const std::string content = llama2 ? Trim(*t.content) : *t.content;
    switch (t.role) {
      case Role::kSystem:
        if (have_system) system += "\n\n";
        system += content;
        have_system = true;
        break;
      case Role::kUser:
        // llama2 puts a BOS before every [INST] but the first (the tokenizer adds that one).
        if (llama2 && !out.empty()) out += "<s>";
        out += "[INST] ";
        if (have_system) {
          if (llama2) {
            out += "<<SYS>>\n";
            emit(system);
            out += "\n<</SYS>>\n\n";
          } else {
            emit(system);
            out += "\n\n";
          }
          system.clear();
          have_system = false;
        }
        emit(content);
        out += " [/INST]";
        break;
      case Role::kAssistant:
        if (llama2) {
          out += " ";
          emit(content);
          out += " </s>";
        } else {
          emit(content);
          out += "</s> ";
        }
        break;
    }
  }
  if (have_system) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " template: a system message must be followed by a user message"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> Render(TemplateId id, std::span<const ChatMessage> messages,
                                   bool add_generation_prompt,
                                   std::vector<TextRange>* content_ranges) {
  if (content_ranges) content_ranges->clear();
  if (messages.empty()) return absl::InvalidArgumentError("messages must not be empty");
  std::vector<Turn> turns;
  turns.reserve(messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    Role role;
    if (!ParseRole(messages[i].role, &role)) {
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "]: unsupported role \"",
                                                     messages[i].role,
                                                     "\" (expected system, user or assistant)"));
    }
    turns.push_back({role, &messages[i].content});
  }
  std::string out;
  const Content content{out, content_ranges};
  switch (id) {
    case TemplateId::kChatml:
      RenderChatml(turns, messages, add_generation_prompt, out, content);
      return out;
    case TemplateId::kLlama3:
      RenderLlama3(turns, messages, add_generation_prompt, out, content);
      return out;
    case TemplateId::kZephyr:
      RenderZephyr(turns, messages, add_generation_prompt, out, content);
      return out;
    case TemplateId::kPlain:
      RenderPlain(turns, add_generation_prompt, out, content);
      return out;
    case TemplateId::kLlama2:
    case TemplateId::kMistral: {
      absl::Status s = RenderInst(id == TemplateId::kLlama2, turns, out, content);
      if (!s.ok()) return s;
      return out;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown chat template id ", static_cast<int>(id)));
}

std::optional<TemplateId> TemplateByName(std::string_view name) {
  for (TemplateId id : {TemplateId::kChatml, TemplateId::kLlama2, TemplateId::kMistral,
                        TemplateId::kZephyr, TemplateId::kLlama3, TemplateId::kPlain}) {
    if (TemplateName(id) == name) return id;
  }
  return std::nullopt;
}

std::string_view TemplateName(TemplateId id) {
  switch (id) {
    case TemplateId::kChatml:
      return "chatml";
    case TemplateId::kLlama2:
      return "llama2";
    case TemplateId::kMistral:
      return "mistral";
    case TemplateId::kZephyr:
      return "zephyr";
    case TemplateId::kLlama3:
      return "llama3";
    case TemplateId::kPlain:
      return "plain";
  }
  return "unknown";
}

std::optional<TemplateId> TryDetectTemplate(std::string_view tmpl) {
  auto has = [tmpl](std::string_view marker) {
    return tmpl.find(marker) != std::string_view::npos;
  };
  if (has("<|im_start|>")) return TemplateId::kChatml;
  if (has("<|start_header_id|>")) return TemplateId::kLlama3;
  if (has("<|user|>")) return TemplateId::kZephyr;
  if (has("[INST]")) return has("<<SYS>>") ? TemplateId::kLlama2 : TemplateId::kMistral;
  return std::nullopt;
}

TemplateId DetectTemplate(std::string_view tmpl) {
  return TryDetectTemplate(tmpl).value_or(TemplateId::kChatml);
}

std::vector<std::string> StopStrings(TemplateId id) {
  switch (id) {
    case TemplateId::kChatml:
      return {"<|im_end|>"};
    case TemplateId::kLlama3:
      return {"<|eot_id|>"};
    case TemplateId::kLlama2:
    case TemplateId::kMistral:
    case TemplateId::kZephyr:
      return {"</s>"};
    case TemplateId::kPlain:
      return {"\nUser:"};
  }
  return {};
}

}  // namespace pipeinfer::chat
