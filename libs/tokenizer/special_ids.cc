#include "tokenizer/special_ids.h"

#include <algorithm>
#include <span>

namespace pipeinfer::tokenizer {
namespace {

using TextList = std::span<const std::string_view>;

// The texts llama.cpp looks for, per role.
constexpr std::string_view kEotTexts[] = {"<|eot_id|>",
                                          "<|im_end|>",
                                          "<|end|>",
                                          "<end_of_turn>",
                                          "<|endoftext|>",
                                          "<EOT>",
                                          "_<EOT>",
                                          "<\xEF\xBD\x9C"
                                          "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
                                          "<end_of_utterance>"};
constexpr std::string_view kEomTexts[] = {"<|eom_id|>"};
constexpr std::string_view kFimPreTexts[] = {"<|fim_prefix|>",
                                             "<fim-prefix>",
                                             "<fim_prefix>",
                                             "<\xEF\xBD\x9C"
                                             "fim\xE2\x96\x81"
                                             "begin\xEF\xBD\x9C>",
                                             "<PRE>",
                                             "\xE2\x96\x81<PRE>",
                                             "<|code_prefix|>"};
constexpr std::string_view kFimSufTexts[] = {"<|fim_suffix|>",
                                             "<fim-suffix>",
                                             "<fim_suffix>",
                                             "<\xEF\xBD\x9C"
                                             "fim\xE2\x96\x81hole\xEF\xBD\x9C>",
                                             "<SUF>",
                                             "\xE2\x96\x81<SUF>",
                                             "<|code_suffix|>"};
constexpr std::string_view kFimMidTexts[] = {"<|fim_middle|>",
                                             "<fim-middle>",
                                             "<fim_middle>",
                                             "<\xEF\xBD\x9C"
                                             "fim\xE2\x96\x81"
                                             "end\xEF\xBD\x9C>",
                                             "<MID>",
                                             "\xE2\x96\x81<MID>",
                                             "<|code_middle|>"};
constexpr std::string_view kFimPadTexts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"};
constexpr std::string_view kFimRepTexts[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
                                             "<REPO>", "<reponame>"};
constexpr std::string_view kFimSepTexts[] = {"<|file_sep|>", "<fim-sep>", "<fim_sep>", "<file_sep>",
                                             "<|file_separator|>"};
// Texts that end generation wherever they are.
constexpr std::string_view kEogTexts[] = {
    "<|eot_id|>",      "<|im_end|>",         "<|end|>",    "<|return|>", "<|call|>",
    "<end_of_turn>",   "<|endoftext|>",      "<|eom_id|>", "<EOT>",      "_<EOT>",
    "<|end_of_text|>", "<end_of_utterance>", "</s>"};

}  // namespace

DerivedSpecialIds DeriveSpecialIds(
    const std::function<std::optional<int32_t>(std::string_view)>& find, int32_t eos, bool retype,
    std::vector<gguf::TokenType>* types) {
  DerivedSpecialIds d;
  auto mark_control = [&](int32_t id) {
    if (!retype || id < 0 || static_cast<size_t>(id) >= types->size()) return;
    if ((*types)[id] == gguf::TokenType::kControl) return;
    (*types)[id] = gguf::TokenType::kControl;
    d.retyped.push_back(id);
  };
  auto first_of = [&](TextList texts, int32_t* out) {
    for (std::string_view text : texts) {
      if (const auto id = find(text)) {
        *out = *id;
        mark_control(*id);
        return;
      }
    }
  };
  first_of(kEotTexts, &d.eot);
  first_of(kEomTexts, &d.eom);
  first_of(kFimPreTexts, &d.fim_pre);
  first_of(kFimSufTexts, &d.fim_suf);
  first_of(kFimMidTexts, &d.fim_mid);
  first_of(kFimPadTexts, &d.fim_pad);
  first_of(kFimRepTexts, &d.fim_rep);
  first_of(kFimSepTexts, &d.fim_sep);

  for (int32_t id : {d.fim_pad, d.fim_rep, d.fim_sep}) {
    if (id >= 0) d.eog.push_back(id);
  }
  for (std::string_view text : kEogTexts) {
    if (const auto id = find(text)) {
      d.eog.push_back(*id);
      mark_control(*id);
    }
  }
  for (int32_t id : {eos, d.eot, d.eom}) {
    if (id >= 0) d.eog.push_back(id);
  }
  std::sort(d.eog.begin(), d.eog.end());
  d.eog.erase(std::unique(d.eog.begin(), d.eog.end()), d.eog.end());
  std::sort(d.retyped.begin(), d.retyped.end());
  d.retyped.erase(std::unique(d.retyped.begin(), d.retyped.end()), d.retyped.end());
  return d;
}

}  // namespace pipeinfer::tokenizer
