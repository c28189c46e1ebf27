#include "router/openai_logprobs.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace pipeinfer::router {
namespace {

using json = nlohmann::json;

std::string Piece(const tokenizer::Tokenizer& tok, uint32_t id) {
  const int32_t one[] = {static_cast<int32_t>(id)};
  return tok.Decode(one);
}

// The token's text for the "token" field and completion keys.
std::string TokenString(const std::string& piece) {
  if (tokenizer::IsValidUtf8(piece)) return piece;
  std::string out = "bytes:";
  char buf[8];
  for (unsigned char c : piece) {
    std::snprintf(buf, sizeof(buf), "\\x%02x", c);
    out += buf;
  }
  return out;
}

json Bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

}  // namespace

json LogprobsRenderer::Empty() const {
  if (chat_) return json{{"content", json::array()}};
  return json{{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
}

json LogprobsRenderer::Render(const std::vector<uint32_t>& ids,
                              const std::vector<TokenLogprobs>& lps) {
  json out = Empty();
  const size_t n = std::min(ids.size(), lps.size());
  for (size_t i = 0; i < n; ++i) {
    const std::string piece = Piece(tok_, ids[i]);
    const TokenLogprobs& lp = lps[i];
    const size_t k = std::min(lp.top_ids.size(), lp.top_logprobs.size());
    if (chat_) {
      json top = json::array();
      for (size_t j = 0; j < k; ++j) {
        const std::string alt = Piece(tok_, lp.top_ids[j]);
        top.push_back(
            {{"token", TokenString(alt)}, {"logprob", lp.top_logprobs[j]}, {"bytes", Bytes(alt)}});
      }
      out["content"].push_back({{"token", TokenString(piece)},
                                {"logprob", lp.logprob},
                                {"bytes", Bytes(piece)},
                                {"top_logprobs", std::move(top)}});
    } else {
      json top = json::object();
      for (size_t j = 0; j < k; ++j) {
        top[TokenString(Piece(tok_, lp.top_ids[j]))] = lp.top_logprobs[j];
      }
      out["tokens"].push_back(TokenString(piece));
      out["token_logprobs"].push_back(lp.logprob);
      out["top_logprobs"].push_back(std::move(top));
      out["text_offset"].push_back(offset_);
    }
    offset_ += detok_.Push(static_cast<int32_t>(ids[i])).size();
  }
  return out;
}

}  // namespace pipeinfer::router
