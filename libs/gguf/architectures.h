// The model architectures the engine runs, in one table: for each `general.architecture` value,
// its RoPE pairing and every tensor it has, with its shape in terms of the hyperparameters.
// The loader validates a file against this table (missing, unexpected and mis-shaped tensors are
// errors that name the tensor), and the engine computes exactly what the table lists.
//
//   llama  (Llama 1/2/3, Mistral): RoPE "normal" (rotates consecutive pairs (2i, 2i+1)); GQA;
//          Llama-3.1 frequency factors from `rope_freqs.weight` or the llama3 rope-scaling keys;
//          optional Q/K/V biases.
//   qwen2  (Qwen2, Qwen2.5):  RoPE NeoX (pairs (i, i + n_rot/2)); Q/K/V biases after the
//          projections, before RoPE.
//   qwen3  (Qwen3 dense):     RoPE NeoX; per-head RMSNorm of q and k (weights [head_dim]) after
//          the projections, before RoPE; no biases; head_dim may differ from n_embd / n_head.
//
// All three may tie the output projection to the token embedding (no `output.weight`).
// The RoPE styles are those of llama.cpp's llama_model_rope_type().
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pipeinfer::gguf {

enum class Arch { kLlama, kQwen2, kQwen3 };

// kNormal: pair (x[2i], x[2i+1]); kNeox: pair (x[i], x[i + n_rot/2]); pair i turns by
// pos * base^(-2i/n_rot) in both.
enum class RopeStyle { kNormal, kNeox };

// Symbolic tensor dimensions, resolved from the hyperparameters (TensorDims).
enum class Dim : uint8_t {
  kEmbd,      // n_embd
  kVocab,     // n_vocab
  kFf,        // n_ff
  kQ,         // n_head * head_dim
  kKv,        // n_head_kv * head_dim
  kHeadDim,   // head_dim
  kRopeHalf,  // n_rot / 2
};

struct TensorDef {
  const char* name;        // per-layer tensors without their "blk.N." prefix
  bool per_layer;          // one per block, named "blk.N.<name>"
  bool required;           // false: may be absent (tied output, optional biases, freq factors)
  std::vector<Dim> shape;  // GGUF order: shape[0] is the row length
};

struct ArchDef {
  Arch arch;
  const char* name;  // the general.architecture value
  RopeStyle rope;
  std::vector<TensorDef> tensors;
};

// Every architecture the engine supports.
const std::vector<ArchDef>& Architectures();
// The definition for a general.architecture value, or nullptr.
const ArchDef* FindArchitecture(std::string_view name);
const ArchDef& ArchitectureOf(Arch arch);
// "llama, qwen2, qwen3"
std::string SupportedArchitectureNames();

// Values of the symbolic dimensions for one model.
struct TensorDims {
  uint64_t embd = 0, vocab = 0, ff = 0, q = 0, kv = 0, head_dim = 0, rope_half = 0;
  uint64_t Of(Dim d) const;
};

// The concrete shape of `def` for `dims`.
std::vector<uint64_t> ResolveShape(const TensorDef& def, const TensorDims& dims);
// The tensor's full name in a file ("blk.3.attn_q.weight" or "output_norm.weight").
std::string TensorName(const TensorDef& def, uint32_t layer);

}  // namespace pipeinfer::gguf
