// The weights one stage computes with: layers [first, last) of a llama-family model (llama, qwen2,
// qwen3; gguf/architectures.h), plus the token embedding (first stage) and the output norm and
// head (last stage; the head is token_embd when the file ties them). Weights keep their stored
// format. They are read from the file's memory mapping (only the stage's tensors are ever read)
// until MoveWeightsToHugePages copies them into anonymous huge-page memory, which CPU stages do
// by default (EngineOptions::weight_memory).
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/huge_pages.h"
#include "engine/rope.h"
#include "gguf/llama.h"
#include "gguf/reader.h"
#include "kernels/kernels.h"

namespace pipeinfer::engine {

struct LayerWeights {
  std::vector<float> attn_norm;  // [n_embd]
  kernels::Matrix wq, wk, wv, wo;
  std::vector<float> bq, bk, bv;      // [n_embd_q], [n_embd_kv] x2 (qwen2), or empty
  std::vector<float> q_norm, k_norm;  // [head_dim] per-head RMSNorm (qwen3), or empty
  std::vector<float> ffn_norm;        // [n_embd]
  kernels::Matrix w_gate, w_up, w_down;

  // The seven matrices, in a fixed order (q, k, v, o, gate, up, down).
  std::array<kernels::Matrix*, 7> matrices() {
    return {&wq, &wk, &wv, &wo, &w_gate, &w_up, &w_down};
  }
  std::array<const kernels::Matrix*, 7> matrices() const {
    return {&wq, &wk, &wv, &wo, &w_gate, &w_up, &w_down};
  }
};

class StageModel {
 public:
  // Opens `path` and selects the stage's tensors. `prefault` reads them in now (warm start).
  static absl::StatusOr<std::unique_ptr<StageModel>> Load(const std::string& path,
                                                          const gguf::StageSpec& spec,
                                                          bool prefault = false);
  // Whole model: every layer, embedding and head.
  static absl::StatusOr<std::unique_ptr<StageModel>> LoadFull(const std::string& path,
                                                              bool prefault = false);
  // Uses an already open file (shared between several stage models, e.g. in tests).
  static absl::StatusOr<std::unique_ptr<StageModel>> FromFile(std::shared_ptr<gguf::GgufFile> f,
                                                              const gguf::StageSpec& spec,
                                                              bool prefault = false);

  const gguf::LlamaHParams& hparams() const { return hp_; }
  const gguf::StageSpec& spec() const { return spec_; }
  const gguf::GgufFile& file() const { return *file_; }
  bool is_first() const { return spec_.embedding; }
  bool is_last() const { return spec_.head; }
  int32_t n_layers() const { return static_cast<int32_t>(layers_.size()); }
  const LayerWeights& layer(int32_t local) const { return layers_[local]; }
  const kernels::Matrix& token_embd() const { return token_embd_; }
  const std::vector<float>& output_norm() const { return output_norm_; }
  const kernels::Matrix& output() const { return output_; }
  const RopeConfig& rope() const { return rope_; }
  uint64_t weight_bytes() const { return weight_bytes_; }

  // Copies the layers' matrices and the head (a tied embedding shares the head's copy; an untied
  // one, read a row per token, stays in the mapping) into one HugePageBuffer and points the
  // matrices at it; vectors are already copies. Returns the bytes copied. Pointers to the old
  // matrix data (views made before) stay valid: the file stays mapped. Matrices are stored in the
  // layout the active kernel path prefers (kernels::PreferredRowInterleave: quantized types in
  // groups of 8 rows on the AVX-512 VNNI path, F32/F16/BF16 on the AVX-512 path;
  // Matrix::interleave says which).
  absl::StatusOr<uint64_t> MoveWeightsToHugePages();
  // The copy made by MoveWeightsToHugePages (empty before).
  const HugePageBuffer& weight_buffer() const { return weight_buffer_; }
  // True when the active kernels want some matrix of the copy in groups of rows
  // (kernels::PreferredRowInterleave).
  bool WantsGroupedLayout() const;
  // Bytes of the copy stored in groups of rows for the kernels (kernels/interleave.h).
  uint64_t grouped_bytes() const { return grouped_bytes_; }

 private:
  StageModel() = default;

  std::shared_ptr<gguf::GgufFile> file_;
  gguf::LlamaHParams hp_;
  gguf::StageSpec spec_;
  std::vector<LayerWeights> layers_;
  kernels::Matrix token_embd_;
  std::vector<float> output_norm_;
  kernels::Matrix output_;
  RopeConfig rope_;
  uint64_t weight_bytes_ = 0;
  HugePageBuffer weight_buffer_;
  uint64_t copied_bytes_ = 0;
  uint64_t grouped_bytes_ = 0;
};

// Matrix view of a 2-D tensor (GGUF [cols, rows]). Fails for unsupported types.
absl::StatusOr<kernels::Matrix> MatrixOf(const gguf::TensorInfo& t);

}  // namespace pipeinfer::engine
