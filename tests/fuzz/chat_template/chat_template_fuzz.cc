// libFuzzer target for chat-template rendering (libs/chat): the input is a Jinja template, then
// (after a 0xff byte) conversation messages separated by 0xff bytes. The template is parsed and
// rendered as the router does (ModelTemplate::FromJinja, then Render with and without the
// generation prompt). Any template must render or give an error: no crash, no sanitizer report,
// no hang; the content ranges reported must lie inside the rendering, in order and disjoint.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "chat/chat_template.h"
#include "chat/jinja.h"
#include "chat/model_template.h"

namespace {

using pipeinfer::chat::ChatMessage;
using pipeinfer::chat::TextRange;

void CheckRanges(const std::string& out, const std::vector<TextRange>& ranges) {
  size_t end = 0;
  for (const TextRange& r : ranges) {
    if (r.offset < end || r.offset + r.length > out.size() || r.length == 0) std::abort();
    end = r.offset + r.length;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= in.size(); ++i) {
    if (i == in.size() || static_cast<uint8_t>(in[i]) == 0xff) {
      parts.emplace_back(in.substr(start, i - start));
      start = i + 1;
    }
  }
  static const char* kRoles[] = {"system", "user", "assistant"};
  std::vector<ChatMessage> msgs;
  for (size_t i = 1; i < parts.size() && msgs.size() < 8; ++i) {
    msgs.push_back({kRoles[(i + parts.size()) % 3], parts[i]});
  }
  // The interpreter directly, with a context of plain values.
  auto t = pipeinfer::chat::jinja::Template::Parse(parts[0]);
  if (t.ok()) {
    using pipeinfer::chat::jinja::Value;
    pipeinfer::chat::jinja::List list;
    for (const ChatMessage& m : msgs) {
      list.push_back(
          Value::DictOf({{"role", Value::Str(m.role)}, {"content", Value::Content(m.content)}}));
    }
    pipeinfer::chat::jinja::Dict ctx = {{"messages", Value::ListOf(std::move(list))},
                                        {"add_generation_prompt", Value::Bool(true)},
                                        {"bos_token", Value::Str("<s>")},
                                        {"eos_token", Value::Str("</s>")}};
    std::vector<pipeinfer::chat::jinja::Mark> marks;
    auto out = t->Render(ctx, &marks);
    if (out.ok()) {
      size_t end = 0;
      for (const auto& m : marks) {
        if (m.offset < end || m.offset + m.length > out->size()) std::abort();
        end = m.offset + m.length;
      }
    }
  }
  // As the router uses it.
  pipeinfer::chat::TemplateTokens tokens;
  tokens.bos = "<s>";
  tokens.eos = "</s>";
  auto mt = pipeinfer::chat::ModelTemplate::FromJinja(parts[0], tokens);
  if (!mt.ok() || msgs.empty()) return 0;
  for (bool gen : {true, false}) {
    std::vector<TextRange> ranges;
    auto out = mt->Render(msgs, gen, &ranges);
    if (out.ok()) CheckRanges(*out, ranges);
  }
  return 0;
}
