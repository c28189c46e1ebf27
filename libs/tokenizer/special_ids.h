// Token ids that llama.cpp (de3ff815) derives from token texts when it loads a vocabulary:
// end-of-turn (EOT), end-of-message (EOM), the fill-in-the-middle (FIM) tokens, and the set of
// end-of-generation (EOG) tokens. A token found this way that is not CONTROL is retyped CONTROL
// (llama.cpp's "control-looking token ... will be overridden"); for Qwen that is 128247 "</s>".
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>
#include <vector>

#include "gguf/llama.h"

namespace pipeinfer::tokenizer {

struct DerivedSpecialIds {
  int32_t eot = -1;
  int32_t eom = -1;
  int32_t fim_pre = -1;
  int32_t fim_suf = -1;
  int32_t fim_mid = -1;
  int32_t fim_pad = -1;
  int32_t fim_rep = -1;
  int32_t fim_sep = -1;
  std::vector<int32_t> eog;      // sorted, distinct
  std::vector<int32_t> retyped;  // ids that were not CONTROL and now are
};

// `find` maps a token text to its id (std::nullopt when absent); `eos` may be -1. Where a list
// has several matching texts, the first text of the list wins (llama.cpp takes whichever its hash
// map yields first). With `retype` set, `types` is updated as described above.
DerivedSpecialIds DeriveSpecialIds(
    const std::function<std::optional<int32_t>(std::string_view)>& find, int32_t eos, bool retype,
    std::vector<gguf::TokenType>* types);

}  // namespace pipeinfer::tokenizer
