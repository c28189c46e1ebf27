// libFuzzer target for the OpenAI request parsing: the input (after a first byte choosing chat or
// completions) is a request body for ParseOpenAiRequest with a RequestBuilder over
// tests/fixtures/models/tiny-f32.gguf (its SentencePiece tokenizer and chat template). Any body
// must give either an Error or a request that fits the context: no crash, no sanitizer report.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <spdlog/spdlog.h>

#include "router/openai_request.h"
#include "router/request_builder.h"
#include "router/served_model.h"

namespace {

using pipeinfer::router::RequestBuilder;
using pipeinfer::router::ServedModel;

constexpr uint32_t kNCtx = 512;

const RequestBuilder& Builder() {
  static ServedModel* model = [] {
    spdlog::set_level(spdlog::level::off);
    auto m = pipeinfer::router::LoadServedModel(PIPEINFER_FIXTURES_DIR "/models/tiny-f32.gguf", "",
                                                "tiny");
    if (!m.ok()) std::abort();
    return new ServedModel(std::move(*m));
  }();
  static RequestBuilder* b = new RequestBuilder(
      *model, kNCtx, pipeinfer::router::PromptBytesBound(*model->tok, kNCtx), false);
  return *b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const RequestBuilder& b = Builder();
  const bool chat = data[0] & 1;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  pipeinfer::router::GenRequest g;
  pipeinfer::router::HttpOptions o;
  const auto err = pipeinfer::router::ParseOpenAiRequest(body, chat, b, &g, &o);
  if (err) {
    if (err->message.empty()) std::abort();  // every refusal says why
    return 0;
  }
  // An accepted request: a non-empty prompt of vocabulary ids that fits the context with its
  // max_tokens.
  if (g.prompt.empty() || !g.max_tokens || *g.max_tokens < 1) std::abort();
  if (g.prompt.size() + uint64_t{*g.max_tokens} > kNCtx) std::abort();
  for (uint32_t id : g.prompt) {
    if (id >= static_cast<uint32_t>(b.model().tok->n_vocab())) std::abort();
  }
  return 0;
}
