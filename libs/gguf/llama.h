// Llama-family view of a GGUF file (architectures llama, qwen2, qwen3; see architectures.h):
// hyperparameters (with llama.cpp's defaults), tokenizer metadata, and the tensors a pipeline stage
// needs for its layer range.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gguf/architectures.h"
#include "gguf/reader.h"

namespace pipeinfer::gguf {

// How RoPE frequencies are scaled (`<arch>.rope.scaling.type`).
enum class RopeScaling {
  kNone,
  kLinear,  // every angle times rope_freq_scale (= 1 / factor)
  kLlama3,  // Llama-3.1: low frequencies divided by `factor`, a smooth ramp in between
};

// Keys are `<arch>.*` for arch = general.architecture.
struct LlamaHParams {
  std::string architecture;                   // "llama", "qwen2" or "qwen3"
  Arch arch = Arch::kLlama;                   // general.architecture as an enum
  RopeStyle rope_style = RopeStyle::kNormal;  // from the architecture (architectures.h)
  std::string name;                           // general.name, may be empty
  uint32_t n_vocab = 0;                       // length of tokenizer.ggml.tokens
  uint32_t n_ctx_train = 0;                   // context_length
  uint32_t n_embd = 0;                        // embedding_length
  uint32_t n_layer = 0;                       // block_count
  uint32_t n_ff = 0;                          // feed_forward_length
  uint32_t n_head = 0;                        // attention.head_count
  uint32_t n_head_kv = 0;                     // attention.head_count_kv (default: n_head)
  uint32_t n_embd_head = 0;                   // attention.key_length (default: n_embd / n_head)
  uint32_t n_rot = 0;               // rope.dimension_count (default: n_embd_head; must equal it)
  float rope_freq_base = 10000.0f;  // rope.freq_base (default 10000)
  float rope_freq_scale = 1.0f;     // 1 / rope.scale_linear, or 1 / rope.scaling.factor (linear)
  RopeScaling rope_scaling = RopeScaling::kNone;  // rope.scaling.type
  // Llama-3.1 scaling (kLlama3): rope.scaling.factor, rope.scaling.low_freq_factor (default 1),
  // rope.scaling.high_freq_factor (default 4), rope.scaling.original_context_length. A
  // `rope_freqs.weight` tensor, when present, takes precedence over these.
  float rope_scaling_factor = 1.0f;
  float rope_low_freq_factor = 1.0f;
  float rope_high_freq_factor = 4.0f;
  uint32_t rope_orig_ctx = 0;
  float rms_norm_eps = 0.0f;  // attention.layer_norm_rms_epsilon (required)
  int64_t file_type = -1;     // general.file_type, -1 when absent

  uint32_t head_dim() const { return n_embd_head; }
  uint32_t n_embd_q() const { return n_embd_head * n_head; }  // query / attention-output width
  uint32_t n_embd_kv() const { return n_embd_head * n_head_kv; }
  uint32_t n_gqa() const { return n_head / n_head_kv; }
  TensorDims dims() const;

  // Reads and validates (supported architecture, consistent head counts, even rope dims, ...).
  // Errors name the key.
  static absl::StatusOr<LlamaHParams> FromGguf(const GgufFile& f);
};

// Token types as stored in tokenizer.ggml.token_type.
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct TokenizerMetadata {
  std::string model;  // tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)
  std::vector<std::string> tokens;
  std::vector<float> scores;           // empty when absent
  std::vector<TokenType> token_types;  // empty when absent
  std::vector<std::string> merges;     // gpt2 only
  std::string pre;  // tokenizer.ggml.pre (gpt2 pre-tokenizer, e.g. "llama-bpe"); "" if absent
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  bool add_bos = true;                       // tokenizer.ggml.add_bos_token (llama default: true)
  bool add_bos_in_file = false;              // whether tokenizer.ggml.add_bos_token is present
  bool add_eos = false;                      // tokenizer.ggml.add_eos_token
  std::optional<std::string> chat_template;  // tokenizer.chat_template

  // Reads tokenizer.ggml.* with llama.cpp's defaults (SentencePiece: bos 1, eos 2, unk 0) and
  // checks that array lengths and special ids agree with the vocabulary.
  static absl::StatusOr<TokenizerMetadata> FromGguf(const GgufFile& f);
};

// Tensors of one transformer block. The optional ones are nullptr when the architecture or the
// file does not have them.
struct LayerTensors {
  const TensorInfo* attn_norm = nullptr;
  const TensorInfo* wq = nullptr;
  const TensorInfo* wk = nullptr;
  const TensorInfo* wv = nullptr;
  const TensorInfo* bq = nullptr;      // qwen2 (optional for llama)
  const TensorInfo* bk = nullptr;      //
  const TensorInfo* bv = nullptr;      //
  const TensorInfo* q_norm = nullptr;  // qwen3: per-head RMSNorm weights [head_dim]
  const TensorInfo* k_norm = nullptr;  //
  const TensorInfo* wo = nullptr;
  const TensorInfo* ffn_norm = nullptr;
  const TensorInfo* w_gate = nullptr;
  const TensorInfo* w_up = nullptr;
  const TensorInfo* w_down = nullptr;

  std::vector<const TensorInfo*> all() const;  // the present ones
};

// What a stage holds: layers [first, last), plus the embedding on the first stage and the output
// norm and head on the last stage. `output` is `token_embd` when the file ties them (no
// output.weight): the last stage then reads token_embd too. `rope_freqs` (Llama-3.1 frequency
// factors) is set on every stage with layers when the file has it.
struct StageTensors {
  uint32_t first_layer = 0;
  uint32_t last_layer = 0;
  const TensorInfo* token_embd = nullptr;
  const TensorInfo* rope_freqs = nullptr;
  std::vector<LayerTensors> layers;
  const TensorInfo* output_norm = nullptr;
  const TensorInfo* output = nullptr;

  std::vector<const TensorInfo*> all() const;
  uint64_t total_bytes() const;
};

struct StageSpec {
  uint32_t first_layer = 0;
  uint32_t last_layer = 0;  // exclusive
  bool embedding = false;   // needs token_embd (stage 0)
  bool head = false;        // needs output_norm + output (last stage)
};

// Checks every tensor of the file against the architecture's table (architectures.h): a missing
// required tensor, a tensor the architecture does not have, or a wrong shape is an error naming
// the tensor. Touches no tensor data.
absl::Status ValidateTensors(const GgufFile& f, const LlamaHParams& hp);

// Validates the file (ValidateTensors), then looks up the tensors of the stage. Touches no tensor
// data.
absl::StatusOr<StageTensors> SelectStageTensors(const GgufFile& f, const LlamaHParams& hp,
                                                const StageSpec& spec);

// Faults in every byte of the stage's tensors (reads one byte per page after MADV_WILLNEED), so
// that serving starts warm. Returns a checksum of the bytes read (keeps the reads observable).
uint64_t PrefaultStage(const GgufFile& f, const StageTensors& st);

// Splits n_layer into `n_stages` contiguous ranges proportionally to `weights` (empty = even).
// Leftover layers go to the last stages. Every stage gets at least one layer.
absl::StatusOr<std::vector<StageSpec>> SplitLayers(uint32_t n_layer, uint32_t n_stages,
                                                   const std::vector<double>& weights = {});

}  // namespace pipeinfer::gguf
