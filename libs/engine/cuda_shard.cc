// GPU shards (CUDA builds only): the layer slice of LayerShard computed with libs/cuda, the KV
// cache's blocks in device memory (CudaKvStore), and the all-reduce between GPU shards (NCCL when
// built with it). The host keeps the KV bookkeeping (kv::KvCache); the device holds the bytes with
// the same block layout, so fork, commit, release and poison behave exactly as on the CPU.
//
// Data crosses the PCIe bus through pinned buffers: a pass uploads its input rows and its row
// description (KV slots, visible keys, RoPE angles computed on the host as the CPU does), and
// downloads hidden states or logits once at the end.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "cuda/cuda_ops.h"
#include "engine/devices.h"
#include "engine/rope.h"
#include "engine/stage_model.h"
#include "spdlog/spdlog.h"

namespace pipeinfer::engine {

namespace {

// One device's part of the stage: its stream, its cuBLAS context and its KV bytes.
struct DeviceSide {
  int ordinal = 0;
  cuda::DeviceInfo info;
  std::unique_ptr<cuda::Stream> stream;
  std::unique_ptr<cuda::GemmContext> gemm;
  cuda::KvLayout layout;
  cuda::DeviceBuffer kv;
};

// KV blocks on every device of the stage (each holds its shard's KV heads of every slot).
class CudaKvStore final : public kv::KvStore {
 public:
  std::vector<std::unique_ptr<DeviceSide>> sides;

  uint8_t* host_data() override { return nullptr; }
  void CopyBlock(kv::BlockId dst, kv::BlockId src) override {
    for (auto& d : sides) Note(cuda::KvCopyBlock(*d->stream, d->layout, d->kv.get(), dst, src));
  }
  void CopySlot(int64_t dst, int64_t src) override {
    for (auto& d : sides) Note(cuda::KvCopySlot(*d->stream, d->layout, d->kv.get(), dst, src));
  }
  // The first failure of a copy (enqueued without a status path back to KvCache); the next pass
  // reports it.
  absl::Status error() const { return error_; }

 private:
  void Note(absl::Status st) {
    if (error_.ok() && !st.ok()) error_ = std::move(st);
  }
  absl::Status error_;
};

struct DeviceLayer {
  cuda::DeviceMatrix wq, wk, wv, wo, w_gate, w_up, w_down;
  cuda::DeviceBuffer attn_norm, ffn_norm, bq, bk, bv, q_norm, k_norm;
};

template <typename T>
absl::Status Stage(cuda::PinnedBuffer& pinned, const T* src, size_t n) {
  PI_RETURN_IF_ERROR(pinned.Reserve(std::max<size_t>(n * sizeof(T), 1)));
  if (n > 0) std::memcpy(pinned.get(), src, n * sizeof(T));
  return absl::OkStatus();
}

class CudaShard final : public LayerShard {
 public:
  CudaShard(const StageModel& model, const ShardSlice& slice, DeviceSide& dev,
            const CudaKvStore& store)
      : model_(model), hp_(model.hparams()), slice_(slice), dev_(dev), store_(store) {}

  absl::Status Upload();

  std::string Describe() const override {
    return absl::StrCat("cuda:", dev_.ordinal, " (", dev_.info.name, ")");
  }
  absl::Status Begin(const PassRows& rows, std::span<const float> x) override;
  absl::Status AttentionPartial(int32_t l) override;
  absl::Status FfnPartial(int32_t l) override;
  absl::Status AddPartial() override {
    return cuda::AddInPlace(S(), x_.as<float>(), partial_.as<float>(),
                            static_cast<int64_t>(n_) * hp_.n_embd);
  }
  float* partial() override { return partial_.as<float>(); }
  absl::Status Keep(std::span<const int32_t> keep, const PassRows& rows) override;
  absl::Status ReadHidden(std::span<float> out) override;
  absl::Status Head(std::span<const int32_t> which, std::span<float> logits) override;
  cuda::Stream& stream() { return *dev_.stream; }

 private:
  cuda::Stream& S() { return *dev_.stream; }
  // Grows a buffer of this shard's device (a default-constructed buffer knows no device yet).
  // Growing frees the old memory, which kernels enqueued earlier may still use (Head grows h_
  // while the last layer's products may still read it): the stream is drained first.
  absl::Status Reserve(cuda::DeviceBuffer& b, size_t bytes) {
    bytes = std::max<size_t>(bytes, 1);
    if (b.get() == nullptr) {
      PI_ASSIGN_OR_RETURN(b, cuda::DeviceBuffer::Allocate(dev_.ordinal, bytes));
      return absl::OkStatus();
    }
    if (b.bytes() >= bytes) return absl::OkStatus();
    PI_RETURN_IF_ERROR(S().Synchronize());
    return b.Reserve(bytes);
  }
  // Uploads the row description (slots, visible keys, RoPE angles) of `rows`.
  absl::Status UploadRows(const PassRows& rows);

  const StageModel& model_;
  const gguf::LlamaHParams& hp_;
  ShardSlice slice_;
  DeviceSide& dev_;
  const CudaKvStore& store_;
  std::vector<DeviceLayer> layers_;
  cuda::DeviceMatrix output_;
  cuda::DeviceBuffer output_norm_;

  int32_t n_ = 0;  // rows of the pass
  int32_t max_visible_ = 0;
  cuda::DeviceBuffer x_, x2_, h_, q_, k_, v_, attn_, partial_, gate_, up_, logits_;
  cuda::DeviceBuffer slots_, vis_offsets_, vis_slots_, cos_, sin_, index_;
  // Attention's partial results when it splits the keys of few rows (grown by Attention itself).
  cuda::DeviceBuffer attn_scratch_;
  // Host staging. in_which_ is Head's own: Keep's copy out of in_index_ may still be pending then.
  cuda::PinnedBuffer in_x_, in_slots_, in_offsets_, in_vis_, in_cos_, in_sin_, in_index_, in_which_,
      out_;
};

absl::Status CudaShard::Upload() {
  const int64_t hd = hp_.head_dim();
  int converted = 0;
  auto matrix = [&](const kernels::Matrix& m, int64_t row0, int64_t n_rows, int64_t col0,
                    int64_t n_cols) -> absl::StatusOr<cuda::DeviceMatrix> {
    PI_ASSIGN_OR_RETURN(cuda::DeviceMatrix d,
                        cuda::UploadMatrix(S(), m.type, m.data, m.rows, m.cols, m.row_bytes, row0,
                                           n_rows, col0, n_cols));
    if (d.converted_to_f16) ++converted;
    return d;
  };
  auto floats = [&](const std::vector<float>& v, size_t begin,
                    size_t n) -> absl::StatusOr<cuda::DeviceBuffer> {
    if (v.empty()) return cuda::DeviceBuffer();
    return cuda::UploadFloats(S(), std::span<const float>(v.data() + begin, n));
  };
  const int64_t n_embd = hp_.n_embd;
  const int64_t q0 = slice_.head0 * hd, nq = slice_.n_heads * hd;
  const int64_t kv0 = slice_.kv_head0 * hd, nkv = slice_.n_kv_heads * hd;
  for (int32_t l = 0; l < model_.n_layers(); ++l) {
    const LayerWeights& w = model_.layer(l);
    DeviceLayer& d = layers_.emplace_back();
    PI_ASSIGN_OR_RETURN(d.wq, matrix(w.wq, q0, nq, 0, n_embd));
    PI_ASSIGN_OR_RETURN(d.wk, matrix(w.wk, kv0, nkv, 0, n_embd));
    PI_ASSIGN_OR_RETURN(d.wv, matrix(w.wv, kv0, nkv, 0, n_embd));
    PI_ASSIGN_OR_RETURN(d.wo, matrix(w.wo, 0, n_embd, q0, nq));
    PI_ASSIGN_OR_RETURN(d.w_gate, matrix(w.w_gate, slice_.ff0, slice_.n_ff, 0, n_embd));
    PI_ASSIGN_OR_RETURN(d.w_up, matrix(w.w_up, slice_.ff0, slice_.n_ff, 0, n_embd));
    PI_ASSIGN_OR_RETURN(d.w_down, matrix(w.w_down, 0, n_embd, slice_.ff0, slice_.n_ff));
    PI_ASSIGN_OR_RETURN(d.attn_norm, floats(w.attn_norm, 0, n_embd));
    PI_ASSIGN_OR_RETURN(d.ffn_norm, floats(w.ffn_norm, 0, n_embd));
    PI_ASSIGN_OR_RETURN(d.bq, floats(w.bq, q0, nq));
    PI_ASSIGN_OR_RETURN(d.bk, floats(w.bk, kv0, nkv));
    PI_ASSIGN_OR_RETURN(d.bv, floats(w.bv, kv0, nkv));
    PI_ASSIGN_OR_RETURN(d.q_norm, floats(w.q_norm, 0, hd));
    PI_ASSIGN_OR_RETURN(d.k_norm, floats(w.k_norm, 0, hd));
  }
  if (model_.is_last() && slice_.index == 0) {
    const kernels::Matrix& o = model_.output();
    PI_ASSIGN_OR_RETURN(output_, matrix(o, 0, o.rows, 0, o.cols));
    PI_ASSIGN_OR_RETURN(output_norm_, floats(model_.output_norm(), 0, n_embd));
  }
  if (converted > 0) {
    spdlog::info(
        "cuda:{}: {} weight matrices have a type without a GPU kernel and were converted "
        "to F16 at upload",
        dev_.ordinal, converted);
  }
  return S().Synchronize();
}

absl::Status CudaShard::UploadRows(const PassRows& rows) {
  n_ = rows.n;
  max_visible_ = rows.max_visible;
  const RopeConfig& rope = model_.rope();
  const int32_t half = rope.n_rot / 2;
  std::vector<float> c(static_cast<size_t>(rows.n) * half), s(c.size());
  for (int32_t i = 0; i < rows.n; ++i) {
    RopeAngles(rope, rows.position[i], c.data() + i * half, s.data() + i * half);
  }
  PI_RETURN_IF_ERROR(Stage(in_slots_, rows.kv_slot.data(), rows.kv_slot.size()));
  PI_RETURN_IF_ERROR(Stage(in_offsets_, rows.vis_offsets.data(), rows.vis_offsets.size()));
  PI_RETURN_IF_ERROR(Stage(in_vis_, rows.vis_slots.data(), rows.vis_slots.size()));
  PI_RETURN_IF_ERROR(Stage(in_cos_, c.data(), c.size()));
  PI_RETURN_IF_ERROR(Stage(in_sin_, s.data(), s.size()));
  auto up = [&](cuda::DeviceBuffer& d, const cuda::PinnedBuffer& p, size_t bytes) -> absl::Status {
    PI_RETURN_IF_ERROR(Reserve(d, bytes));
    if (bytes == 0) return absl::OkStatus();
    return cuda::CopyToDevice(S(), d.get(), p.get(), bytes);
  };
  PI_RETURN_IF_ERROR(up(slots_, in_slots_, rows.kv_slot.size() * sizeof(int64_t)));
  PI_RETURN_IF_ERROR(up(vis_offsets_, in_offsets_, rows.vis_offsets.size() * sizeof(int32_t)));
  PI_RETURN_IF_ERROR(up(vis_slots_, in_vis_, rows.vis_slots.size() * sizeof(int64_t)));
  PI_RETURN_IF_ERROR(up(cos_, in_cos_, c.size() * sizeof(float)));
  PI_RETURN_IF_ERROR(up(sin_, in_sin_, s.size() * sizeof(float)));
  return absl::OkStatus();
}

absl::Status CudaShard::Begin(const PassRows& rows, std::span<const float> x) {
  PI_RETURN_IF_ERROR(store_.error());
  // The staging buffers are refilled below. A pass that ended normally left this stream idle,
  // but one that failed half-way (or a shard other than 0, which downloads nothing) may still
  // have copies out of them pending.
  PI_RETURN_IF_ERROR(S().Synchronize());
  PI_RETURN_IF_ERROR(UploadRows(rows));
  const int64_t n = rows.n, n_embd = hp_.n_embd, hd = hp_.head_dim();
  const int64_t nq = slice_.n_heads * hd, nkv = slice_.n_kv_heads * hd;
  const size_t f = sizeof(float);
  for (cuda::DeviceBuffer* b : {&x_, &x2_, &h_, &partial_})
    PI_RETURN_IF_ERROR(Reserve(*b, n * n_embd * f));
  PI_RETURN_IF_ERROR(Reserve(q_, n * nq * f));
  PI_RETURN_IF_ERROR(Reserve(attn_, n * nq * f));
  PI_RETURN_IF_ERROR(Reserve(k_, n * nkv * f));
  PI_RETURN_IF_ERROR(Reserve(v_, n * nkv * f));
  PI_RETURN_IF_ERROR(Reserve(gate_, n * slice_.n_ff * f));
  PI_RETURN_IF_ERROR(Reserve(up_, n * slice_.n_ff * f));
  PI_RETURN_IF_ERROR(Stage(in_x_, x.data(), x.size()));
  return cuda::CopyToDevice(S(), x_.get(), in_x_.get(), x.size() * f);
}

absl::Status CudaShard::AttentionPartial(int32_t l) {
  const DeviceLayer& w = layers_[l];
  const int64_t n = n_, n_embd = hp_.n_embd;
  const int32_t hd = static_cast<int32_t>(hp_.head_dim());
  const int64_t nq = slice_.n_heads * hd, nkv = slice_.n_kv_heads * hd;
  const float eps = hp_.rms_norm_eps;
  cuda::GemmContext& g = *dev_.gemm;
  float* h = h_.as<float>();
  float *q = q_.as<float>(), *k = k_.as<float>(), *v = v_.as<float>();
  PI_RETURN_IF_ERROR(
      cuda::RmsNormRows(S(), x_.as<float>(), w.attn_norm.as<float>(), n, n_embd, eps, h));
  PI_RETURN_IF_ERROR(cuda::MatMul(g, w.wq, h, n_embd, n, q, nq));
  PI_RETURN_IF_ERROR(cuda::MatMul(g, w.wk, h, n_embd, n, k, nkv));
  PI_RETURN_IF_ERROR(cuda::MatMul(g, w.wv, h, n_embd, n, v, nkv));
  if (w.bq.get() != nullptr) {
    PI_RETURN_IF_ERROR(cuda::AddBiasRows(S(), q, w.bq.as<float>(), n, nq, nq));
    PI_RETURN_IF_ERROR(cuda::AddBiasRows(S(), k, w.bk.as<float>(), n, nkv, nkv));
    PI_RETURN_IF_ERROR(cuda::AddBiasRows(S(), v, w.bv.as<float>(), n, nkv, nkv));
  }
  if (w.q_norm.get() != nullptr) {
    PI_RETURN_IF_ERROR(
        cuda::HeadRmsNorm(S(), q, w.q_norm.as<float>(), n, slice_.n_heads, hd, nq, eps));
  }
  if (w.k_norm.get() != nullptr) {
    PI_RETURN_IF_ERROR(
        cuda::HeadRmsNorm(S(), k, w.k_norm.as<float>(), n, slice_.n_kv_heads, hd, nkv, eps));
  }
  const RopeConfig& rope = model_.rope();
  const bool neox = rope.style == gguf::RopeStyle::kNeox;
  PI_RETURN_IF_ERROR(cuda::Rope(S(), q, n, slice_.n_heads, hd, nq, rope.n_rot, neox,
                                cos_.as<float>(), sin_.as<float>()));
  PI_RETURN_IF_ERROR(cuda::Rope(S(), k, n, slice_.n_kv_heads, hd, nkv, rope.n_rot, neox,
                                cos_.as<float>(), sin_.as<float>()));
  PI_RETURN_IF_ERROR(
      cuda::KvWrite(S(), dev_.layout, dev_.kv.get(), l, slots_.as<int64_t>(), k, nkv, v, nkv, n));
  PI_RETURN_IF_ERROR(cuda::Attention(S(), dev_.layout, dev_.kv.get(), l, q, nq, n, slice_.n_heads,
                                     slice_.n_kv_heads, hd, vis_offsets_.as<int32_t>(),
                                     vis_slots_.as<int64_t>(), max_visible_, attn_.as<float>(), nq,
                                     &attn_scratch_));
  return cuda::MatMul(g, w.wo, attn_.as<float>(), nq, n, partial_.as<float>(), n_embd);
}

absl::Status CudaShard::FfnPartial(int32_t l) {
  const DeviceLayer& w = layers_[l];
  const int64_t n = n_, n_embd = hp_.n_embd, n_ff = slice_.n_ff;
  cuda::GemmContext& g = *dev_.gemm;
  float *h = h_.as<float>(), *gate = gate_.as<float>(), *up = up_.as<float>();
  PI_RETURN_IF_ERROR(cuda::RmsNormRows(S(), x_.as<float>(), w.ffn_norm.as<float>(), n, n_embd,
                                       hp_.rms_norm_eps, h));
  PI_RETURN_IF_ERROR(cuda::MatMul(g, w.w_gate, h, n_embd, n, gate, n_ff));
  PI_RETURN_IF_ERROR(cuda::MatMul(g, w.w_up, h, n_embd, n, up, n_ff));
  PI_RETURN_IF_ERROR(cuda::SwiGlu(S(), gate, up, gate, n * n_ff));
  return cuda::MatMul(g, w.w_down, gate, n_ff, n, partial_.as<float>(), n_embd);
}

absl::Status CudaShard::Keep(std::span<const int32_t> keep, const PassRows& rows) {
  // The staging buffers may still feed copies of this pass: wait before refilling them.
  PI_RETURN_IF_ERROR(S().Synchronize());
  const int64_t n_embd = hp_.n_embd;
  if (!keep.empty()) {
    PI_RETURN_IF_ERROR(Stage(in_index_, keep.data(), keep.size()));
    PI_RETURN_IF_ERROR(Reserve(index_, keep.size() * sizeof(int32_t)));
    PI_RETURN_IF_ERROR(
        cuda::CopyToDevice(S(), index_.get(), in_index_.get(), keep.size() * sizeof(int32_t)));
    PI_RETURN_IF_ERROR(cuda::GatherRows(S(), x_.as<float>(), index_.as<int32_t>(),
                                        static_cast<int64_t>(keep.size()), n_embd,
                                        x2_.as<float>()));
    std::swap(x_, x2_);
  }
  return UploadRows(rows);
}

absl::Status CudaShard::ReadHidden(std::span<float> out) {
  const size_t bytes = out.size() * sizeof(float);
  PI_RETURN_IF_ERROR(out_.Reserve(std::max<size_t>(bytes, 1)));
  if (bytes > 0) PI_RETURN_IF_ERROR(cuda::CopyToHost(S(), out_.get(), x_.get(), bytes));
  PI_RETURN_IF_ERROR(S().Synchronize());
  if (bytes > 0) std::memcpy(out.data(), out_.get(), bytes);
  return absl::OkStatus();
}

absl::Status CudaShard::Head(std::span<const int32_t> which, std::span<float> logits) {
  const int64_t m = static_cast<int64_t>(which.size());
  const int64_t n_embd = hp_.n_embd, n_vocab = hp_.n_vocab;
  if (m == 0) return S().Synchronize();
  if (output_.data.get() == nullptr)
    return absl::InternalError("output head asked of a shard without it");
  PI_RETURN_IF_ERROR(Stage(in_which_, which.data(), which.size()));
  PI_RETURN_IF_ERROR(Reserve(index_, m * sizeof(int32_t)));
  PI_RETURN_IF_ERROR(cuda::CopyToDevice(S(), index_.get(), in_which_.get(), m * sizeof(int32_t)));
  PI_RETURN_IF_ERROR(Reserve(x2_, m * n_embd * sizeof(float)));
  PI_RETURN_IF_ERROR(Reserve(h_, m * n_embd * sizeof(float)));
  PI_RETURN_IF_ERROR(
      cuda::GatherRows(S(), x_.as<float>(), index_.as<int32_t>(), m, n_embd, x2_.as<float>()));
  PI_RETURN_IF_ERROR(cuda::RmsNormRows(S(), x2_.as<float>(), output_norm_.as<float>(), m, n_embd,
                                       hp_.rms_norm_eps, h_.as<float>()));
  PI_RETURN_IF_ERROR(Reserve(logits_, m * n_vocab * sizeof(float)));
  PI_RETURN_IF_ERROR(
      cuda::MatMul(*dev_.gemm, output_, h_.as<float>(), n_embd, m, logits_.as<float>(), n_vocab));
  const size_t bytes = static_cast<size_t>(m * n_vocab) * sizeof(float);
  PI_RETURN_IF_ERROR(out_.Reserve(bytes));
  PI_RETURN_IF_ERROR(cuda::CopyToHost(S(), out_.get(), logits_.get(), bytes));
  PI_RETURN_IF_ERROR(S().Synchronize());
  std::memcpy(logits.data(), out_.get(), bytes);
  return absl::OkStatus();
}

// The all-reduce between GPU shards: libs/cuda's Communicator over their partial buffers.
class CudaAllReduce final : public AllReduce {
 public:
  CudaAllReduce(std::unique_ptr<cuda::Communicator> comm, std::vector<cuda::Stream*> streams)
      : comm_(std::move(comm)), streams_(std::move(streams)) {}
  absl::Status Sum(std::span<LayerShard* const> shards, int64_t n) override {
    std::vector<float*> bufs;
    for (LayerShard* s : shards) bufs.push_back(s->partial());
    return comm_->AllReduceSum(bufs, n, streams_);
  }

 private:
  std::unique_ptr<cuda::Communicator> comm_;
  std::vector<cuda::Stream*> streams_;
};

}  // namespace

absl::StatusOr<CudaStage> CreateCudaStage(const StageModel& model, const kv::KvConfig& kv,
                                          std::span<const int> ordinals) {
  PI_ASSIGN_OR_RETURN(const int count, cuda::DeviceCount());
  const int world = static_cast<int>(ordinals.size());
  auto store = std::make_unique<CudaKvStore>();
  std::vector<ShardSlice> slices;
  for (int i = 0; i < world; ++i) {
    if (ordinals[i] >= count) {
      return absl::FailedPreconditionError(absl::StrCat("no CUDA device cuda:", ordinals[i],
                                                        ": this machine has ", count,
                                                        " (cuda:0..cuda:", count - 1, ")"));
    }
    PI_ASSIGN_OR_RETURN(ShardSlice s, SliceFor(model, i, world));
    slices.push_back(s);
    auto side = std::make_unique<DeviceSide>();
    side->ordinal = ordinals[i];
    PI_ASSIGN_OR_RETURN(side->info, cuda::UseDevice(ordinals[i]));
    PI_ASSIGN_OR_RETURN(side->stream, cuda::Stream::Create(ordinals[i]));
    PI_ASSIGN_OR_RETURN(side->gemm, cuda::GemmContext::Create(*side->stream));
    side->layout.n_layers = kv.n_layers;
    side->layout.block_tokens = kv.block_tokens;
    side->layout.row_elems = static_cast<int32_t>(s.n_kv_heads * model.hparams().head_dim());
    side->layout.f16 = kv.type == kv::ElemType::kF16;
    const size_t bytes = side->layout.block_bytes() * static_cast<size_t>(kv.n_blocks());
    PI_ASSIGN_OR_RETURN(side->kv, cuda::DeviceBuffer::Allocate(ordinals[i], bytes));
    store->sides.push_back(std::move(side));
  }
  CudaStage stage;
  std::vector<cuda::Stream*> streams;
  for (int i = 0; i < world; ++i) {
    DeviceSide& side = *store->sides[i];
    PI_RETURN_IF_ERROR(cuda::UseDevice(side.ordinal).status());
    auto shard = std::make_unique<CudaShard>(model, slices[i], side, *store);
    PI_RETURN_IF_ERROR(shard->Upload());
    spdlog::info("stage layers {}..{} on {}: {} of {} KV heads, KV cache {:.1f} MiB",
                 model.spec().first_layer, model.spec().last_layer, shard->Describe(),
                 slices[i].n_kv_heads, model.hparams().n_head_kv,
                 static_cast<double>(side.kv.bytes()) / (1 << 20));
    streams.push_back(side.stream.get());
    stage.shards.push_back(std::move(shard));
  }
  PI_ASSIGN_OR_RETURN(auto comm, cuda::Communicator::Create(ordinals));
  stage.all_reduce = std::make_unique<CudaAllReduce>(std::move(comm), std::move(streams));
  stage.kv_store = std::move(store);
  return stage;
}

}  // namespace pipeinfer::engine
