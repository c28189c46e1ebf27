// OpenAI's logprobs objects from the draft service's per-token log-probabilities:
//  * chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
//    "bytes"}]}]};
//  * completions: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}.
// A token's text is its piece (tokenizer Decode of the id alone) when that is valid UTF-8, else
// "bytes:\xNN..." (OpenAI's notation for a token that is part of a character), so that distinct
// tokens keep distinct strings; "bytes" holds the exact bytes. text_offset is the length in bytes
// of the completion text produced before the token (the router's incremental detokenizing),
// continuing over the chunks of a stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "router/gen_request.h"
#include "tokenizer/tokenizer.h"

namespace pipeinfer::router {

class LogprobsRenderer {
 public:
  LogprobsRenderer(const tokenizer::Tokenizer& tok, bool chat)
      : tok_(tok), chat_(chat), detok_(tok) {}

  // The logprobs object for the next tokens of the answer (one TokenLogprobs per id).
  nlohmann::json Render(const std::vector<uint32_t>& ids, const std::vector<TokenLogprobs>& lps);
  // The same object for no tokens ({"content": []} or empty lists).
  nlohmann::json Empty() const;

 private:
  const tokenizer::Tokenizer& tok_;
  const bool chat_;
  tokenizer::IncrementalDetokenizer detok_;  // for text_offset
  size_t offset_ = 0;
};

}  // namespace pipeinfer::router
