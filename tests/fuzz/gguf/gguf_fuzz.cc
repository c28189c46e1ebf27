// libFuzzer target for the GGUF parser and everything that consumes its result. Any input must
// give either a parsed file or an error status: no crash, no sanitizer report, no hang.
#include <cstddef>
#include <cstdint>
#include <span>

#include "gguf/inspect.h"
#include "gguf/llama.h"
#include "gguf/reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = pipeinfer::gguf::GgufFile::Parse(std::span<const uint8_t>(data, size), "fuzz");
  if (!f.ok()) return 0;
  const auto& file = **f;
  auto hp = pipeinfer::gguf::LlamaHParams::FromGguf(file);
  (void)pipeinfer::gguf::TokenizerMetadata::FromGguf(file);
  (void)pipeinfer::gguf::InspectReport(file);
  if (hp.ok() && hp->n_layer > 0) {
    auto st = pipeinfer::gguf::SelectStageTensors(file, *hp, {0, hp->n_layer, true, true});
    if (st.ok()) (void)pipeinfer::gguf::PrefaultStage(file, *st);
  }
  // Every tensor's bytes must lie inside the input.
  for (const auto& t : file.tensors()) {
    if (t.n_bytes > 0) {
      volatile uint8_t first = t.data[0];
      volatile uint8_t last = t.data[t.n_bytes - 1];
      (void)first;
      (void)last;
    }
  }
  return 0;
}
