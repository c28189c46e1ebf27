#include "engine/stage_model.h"

#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/interleave.h"

namespace pipeinfer::engine {

absl::StatusOr<kernels::Matrix> MatrixOf(const gguf::TensorInfo& t) {
  if (t.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", t.name, "' is not a matrix: shape ", t.ShapeString()));
  }
  if (!kernels::SupportsType(t.type)) {
    return absl::UnimplementedError(absl::StrCat("tensor '", t.name, "' has type ",
                                                 gguf::TypeInfo(t.type).name,
                                                 " which the CPU kernels do not support yet"));
  }
  kernels::Matrix m;
  m.type = t.type;
  m.data = t.data;
  m.cols = static_cast<int64_t>(t.shape[0]);
  m.rows = static_cast<int64_t>(t.shape[1]);
  m.row_bytes = static_cast<size_t>(t.n_bytes / t.shape[1]);
  return m;
}

namespace {

// Norm weights and biases as floats (stored F32 in practice; other types are decoded once).
absl::StatusOr<std::vector<float>> VectorOf(const gguf::TensorInfo& t) {
  if (t.shape.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' is not a vector"));
  }
  if (!kernels::SupportsType(t.type)) {
    return absl::UnimplementedError(
        absl::StrCat("tensor '", t.name, "' has unsupported type ", gguf::TypeInfo(t.type).name));
  }
  kernels::Matrix m;
  m.type = t.type;
  m.data = t.data;
  m.cols = static_cast<int64_t>(t.shape[0]);
  m.rows = 1;
  m.row_bytes = static_cast<size_t>(t.n_bytes);
  std::vector<float> out(m.cols);
  kernels::DequantizeRow(m, 0, out.data());
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<StageModel>> StageModel::Load(const std::string& path,
                                                             const gguf::StageSpec& spec,
                                                             bool prefault) {
  PI_ASSIGN_OR_RETURN(auto f, gguf::GgufFile::Open(path));
  return FromFile(std::shared_ptr<gguf::GgufFile>(std::move(f)), spec, prefault);
}

absl::StatusOr<std::unique_ptr<StageModel>> StageModel::LoadFull(const std::string& path,
                                                                 bool prefault) {
  PI_ASSIGN_OR_RETURN(auto f, gguf::GgufFile::Open(path));
  PI_ASSIGN_OR_RETURN(auto hp, gguf::LlamaHParams::FromGguf(*f));
  return FromFile(std::shared_ptr<gguf::GgufFile>(std::move(f)),
                  gguf::StageSpec{0, hp.n_layer, true, true}, prefault);
}

absl::StatusOr<std::unique_ptr<StageModel>> StageModel::FromFile(std::shared_ptr<gguf::GgufFile> f,
                                                                 const gguf::StageSpec& spec,
                                                                 bool prefault) {
  std::unique_ptr<StageModel> m(new StageModel());
  m->file_ = std::move(f);
  m->spec_ = spec;
  PI_ASSIGN_OR_RETURN(m->hp_, gguf::LlamaHParams::FromGguf(*m->file_));
  PI_ASSIGN_OR_RETURN(auto st, gguf::SelectStageTensors(*m->file_, m->hp_, spec));
  if (st.token_embd) {
    PI_ASSIGN_OR_RETURN(m->token_embd_, MatrixOf(*st.token_embd));
  }
  std::vector<float> rope_freqs;
  if (st.rope_freqs) {
    PI_ASSIGN_OR_RETURN(rope_freqs, VectorOf(*st.rope_freqs));
  }
  PI_ASSIGN_OR_RETURN(m->rope_, RopeConfig::For(m->hp_, std::move(rope_freqs)));
  // Optional per-layer vectors: empty when the file has none.
  auto vector_or_empty = [](const gguf::TensorInfo* t) -> absl::StatusOr<std::vector<float>> {
    if (t == nullptr) return std::vector<float>();
    return VectorOf(*t);
  };
  for (const auto& lt : st.layers) {
    LayerWeights lw;
    PI_ASSIGN_OR_RETURN(lw.attn_norm, VectorOf(*lt.attn_norm));
    PI_ASSIGN_OR_RETURN(lw.wq, MatrixOf(*lt.wq));
    PI_ASSIGN_OR_RETURN(lw.wk, MatrixOf(*lt.wk));
    PI_ASSIGN_OR_RETURN(lw.wv, MatrixOf(*lt.wv));
    PI_ASSIGN_OR_RETURN(lw.bq, vector_or_empty(lt.bq));
    PI_ASSIGN_OR_RETURN(lw.bk, vector_or_empty(lt.bk));
    PI_ASSIGN_OR_RETURN(lw.bv, vector_or_empty(lt.bv));
    PI_ASSIGN_OR_RETURN(lw.q_norm, vector_or_empty(lt.q_norm));
    PI_ASSIGN_OR_RETURN(lw.k_norm, vector_or_empty(lt.k_norm));
    PI_ASSIGN_OR_RETURN(lw.wo, MatrixOf(*lt.wo));
    PI_ASSIGN_OR_RETURN(lw.ffn_norm, VectorOf(*lt.ffn_norm));
    PI_ASSIGN_OR_RETURN(lw.w_gate, MatrixOf(*lt.w_gate));
    PI_ASSIGN_OR_RETURN(lw.w_up, MatrixOf(*lt.w_up));
    PI_ASSIGN_OR_RETURN(lw.w_down, MatrixOf(*lt.w_down));
    m->layers_.push_back(std::move(lw));
  }
  if (st.output) {
    PI_ASSIGN_OR_RETURN(m->output_norm_, VectorOf(*st.output_norm));
    PI_ASSIGN_OR_RETURN(m->output_, MatrixOf(*st.output));
  }
  m->weight_bytes_ = st.total_bytes();
  if (prefault) gguf::PrefaultStage(*m->file_, st);
  return m;
}

bool StageModel::WantsGroupedLayout() const {
  const auto wants = [](const kernels::Matrix& m) {
    return m.data != nullptr && kernels::PreferredRowInterleave(m.type, m.rows, m.cols) != 1;
  };
  for (const LayerWeights& l : layers_) {
    for (const kernels::Matrix* m : l.matrices()) {
      if (wants(*m)) return true;
    }
  }
  return wants(output_);
}

absl::StatusOr<uint64_t> StageModel::MoveWeightsToHugePages() {
  if (weight_buffer_.data() != nullptr) return copied_bytes_;
  std::vector<kernels::Matrix*> all;
  for (LayerWeights& l : layers_) {
    for (kernels::Matrix* m : l.matrices()) {
      all.push_back(m);
    }
  }
  // The embedding is read one row per token, never streamed: it stays in the mapping unless the
  // head is tied to it (then both point to the head's copy).
  const bool tied = token_embd_.data != nullptr && token_embd_.data == output_.data;
  if (tied) all.push_back(&token_embd_);
  all.push_back(&output_);
  // One copy per distinct source (a tied embedding is the head), each 64-byte aligned and in the
  // layout the active kernels want (kernels/interleave.h).
  constexpr size_t kAlign = 64;
  struct Place {
    const kernels::Matrix* source;  // the first matrix with this data
    size_t offset, bytes;
    int32_t interleave;
  };
  std::map<const uint8_t*, Place> place;
  size_t total = 0;
  for (const kernels::Matrix* m : all) {
    if (m->data == nullptr || place.contains(m->data)) continue;
    const size_t n = static_cast<size_t>(m->rows) * m->row_bytes;
    place[m->data] = {m, total, n, kernels::PreferredRowInterleave(m->type, m->rows, m->cols)};
    total += (n + kAlign - 1) / kAlign * kAlign;
  }
  PI_ASSIGN_OR_RETURN(HugePageBuffer buf, HugePageBuffer::Allocate(total));
  copied_bytes_ = 0;
  grouped_bytes_ = 0;
  for (const auto& [src, at] : place) {
    kernels::InterleaveRows(*at.source, at.interleave, buf.data() + at.offset);
    copied_bytes_ += at.bytes;
    if (at.interleave != 1) grouped_bytes_ += at.bytes;
  }
  for (kernels::Matrix* m : all) {
    if (m->data == nullptr) continue;
    const Place& at = place.at(m->data);
    m->interleave = at.interleave;
    m->data = buf.data() + at.offset;
  }
  weight_buffer_ = std::move(buf);
  return copied_bytes_;
}

}  // namespace pipeinfer::engine
