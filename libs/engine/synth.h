// Random llama models written as valid GGUF files, for benchmarks and tests that need a model of a
// given shape and weight type (`pipeinfer gguf synth`).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "gguf/tensor_type.h"

namespace pipeinfer::engine {

struct SynthSpec {
  uint32_t n_layer = 4;
  uint32_t n_embd = 512;
  uint32_t n_ff = 1408;
  uint32_t n_head = 8;
  uint32_t n_head_kv = 8;
  uint32_t n_vocab = 1024;  // >= 259: <unk>, <s>, </s>, 256 byte tokens, then filler tokens
  uint32_t n_ctx = 2048;
  gguf::TensorType type = gguf::TensorType::kF16;  // 2-D weights; norms are F32
  uint64_t seed = 1;
  std::string name = "synthetic";
};

// Weights ~ N(0, 1/sqrt(n_in)) for float types; random quantized blocks with small finite scales
// for quantized types. Row lengths must be multiples of the type's block size.
absl::Status WriteSyntheticModel(const SynthSpec& spec, const std::string& path);

}  // namespace pipeinfer::engine
