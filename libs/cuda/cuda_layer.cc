// Host side of the layer kernels: argument checks, then a launch on the stream's device (the
// kernels are in cuda_layer.cu).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "cuda/cuda_host.h"
#include "cuda/cuda_internal.h"
#include "cuda/cuda_launch.h"
#include "cuda/cuda_ops.h"

namespace pipeinfer::cuda {

internal::KvGeometry internal::KvGeometryOf(const KvLayout& layout) {
  KvGeometry g;
  g.row_bytes = static_cast<int64_t>(layout.row_bytes());
  g.layer_bytes = 2 * static_cast<int64_t>(layout.block_tokens) * g.row_bytes;
  g.block_bytes = static_cast<int64_t>(layout.block_bytes());
  g.block_tokens = layout.block_tokens;
  g.row_elems = layout.row_elems;
  g.n_layers = layout.n_layers;
  g.f16 = layout.f16;
  return g;
}

namespace {

using internal::DeviceScope;
using internal::FitsInt;
using internal::kAttentionMaxSplits;
using internal::Raw;
using internal::Require;

// Makes the stream's device current, runs `launch` (which enqueues one kernel and returns the
// launch error) and turns that error into a status.
template <typename Launch>
absl::Status Enqueue(Stream& s, const char* where, Launch&& launch) {
  DeviceScope scope;
  PI_RETURN_IF_ERROR(scope.Enter(s.device(), where));
  internal::ClearStaleError();
  return internal::CudaStatus(launch(), where, "kernel launch");
}

absl::Status CheckLayout(const KvLayout& layout, const char* where) {
  return Require(layout.n_layers >= 1 && layout.block_tokens >= 1 && layout.row_elems >= 1, where,
                 absl::StrCat("bad KV layout: ", layout.n_layers, " layers, ", layout.block_tokens,
                              " tokens per block, ", layout.row_elems, " elements per row"));
}

}  // namespace

absl::Status RmsNormRows(Stream& s, const float* d_x, const float* d_w, int64_t n_rows, int64_t n,
                         float eps, float* d_out) {
  constexpr const char* kWhere = "RmsNormRows";
  PI_RETURN_IF_ERROR(Require(FitsInt(n_rows) && n >= 0, kWhere, "bad sizes"));
  if (n_rows == 0) return absl::OkStatus();
  PI_RETURN_IF_ERROR(Require(n >= 1, kWhere, "rows of zero floats"));
  PI_RETURN_IF_ERROR(
      Require(d_x != nullptr && d_w != nullptr && d_out != nullptr, kWhere, "null pointer"));
  return Enqueue(s, kWhere, [&] {
    return internal::LaunchRmsNormRows(d_x, d_w, n_rows, n, eps, d_out, Raw(s));
  });
}

absl::Status AddBiasRows(Stream& s, float* d_x, const float* d_b, int64_t n_rows, int64_t n,
                         int64_t stride) {
  constexpr const char* kWhere = "AddBiasRows";
  PI_RETURN_IF_ERROR(Require(n_rows >= 0 && n >= 0, kWhere, "negative sizes"));
  if (n_rows == 0 || n == 0) return absl::OkStatus();
  PI_RETURN_IF_ERROR(
      Require(n_rows == 1 || stride >= n, kWhere, absl::StrCat("stride ", stride, " < n ", n)));
  PI_RETURN_IF_ERROR(Require(d_x != nullptr && d_b != nullptr, kWhere, "null pointer"));
  return Enqueue(s, kWhere,
                 [&] { return internal::LaunchAddBiasRows(d_x, d_b, n_rows, n, stride, Raw(s)); });
}

absl::Status HeadRmsNorm(Stream& s, float* d_x, const float* d_w, int64_t n_rows, int32_t n_heads,
                         int32_t head_dim, int64_t stride, float eps) {
  constexpr const char* kWhere = "HeadRmsNorm";
  PI_RETURN_IF_ERROR(Require(n_rows >= 0 && n_heads >= 1 && head_dim >= 1, kWhere, "bad sizes"));
  if (n_rows == 0) return absl::OkStatus();
  PI_RETURN_IF_ERROR(
      Require(n_rows == 1 || stride >= int64_t{n_heads} * head_dim, kWhere,
              absl::StrCat("stride ", stride, " < ", n_heads, " heads x ", head_dim)));
  PI_RETURN_IF_ERROR(Require(FitsInt(n_rows * n_heads), kWhere, "too many heads"));
  PI_RETURN_IF_ERROR(Require(d_x != nullptr && d_w != nullptr, kWhere, "null pointer"));
  return Enqueue(s, kWhere, [&] {
    return internal::LaunchHeadRmsNorm(d_x, d_w, n_rows, n_heads, head_dim, stride, eps, Raw(s));
  });
}

absl::Status Rope(Stream& s, float* d_x, int64_t n_rows, int32_t n_heads, int32_t head_dim,
                  int64_t stride, int32_t n_rot, bool neox, const float* d_cos,
                  const float* d_sin) {
  constexpr const char* kWhere = "Rope";
  PI_RETURN_IF_ERROR(Require(n_rows >= 0 && n_heads >= 1 && head_dim >= 1, kWhere, "bad sizes"));
  PI_RETURN_IF_ERROR(
      Require(n_rot >= 2 && n_rot % 2 == 0 && n_rot <= head_dim, kWhere,
              absl::StrCat("n_rot ", n_rot, " must be even and in [2, head_dim ", head_dim, "]")));
  if (n_rows == 0) return absl::OkStatus();
  PI_RETURN_IF_ERROR(
      Require(n_rows == 1 || stride >= int64_t{n_heads} * head_dim, kWhere,
              absl::StrCat("stride ", stride, " < ", n_heads, " heads x ", head_dim)));
  PI_RETURN_IF_ERROR(
      Require(d_x != nullptr && d_cos != nullptr && d_sin != nullptr, kWhere, "null pointer"));
  return Enqueue(s, kWhere, [&] {
    return internal::LaunchRope(d_x, n_rows, n_heads, head_dim, stride, n_rot, neox, d_cos, d_sin,
                                Raw(s));
  });
}

absl::Status KvWrite(Stream& s, const KvLayout& layout, void* d_kv, int32_t layer,
                     const int64_t* d_slots, const float* d_k, int64_t k_stride, const float* d_v,
                     int64_t v_stride, int64_t n_rows) {
  constexpr const char* kWhere = "KvWrite";
  PI_RETURN_IF_ERROR(CheckLayout(layout, kWhere));
  PI_RETURN_IF_ERROR(Require(layer >= 0 && layer < layout.n_layers, kWhere,
                             absl::StrCat("layer ", layer, " of ", layout.n_layers)));
  PI_RETURN_IF_ERROR(Require(n_rows >= 0, kWhere, "negative n_rows"));
  if (n_rows == 0) return absl::OkStatus();
  PI_RETURN_IF_ERROR(Require(
      n_rows == 1 || (k_stride >= layout.row_elems && v_stride >= layout.row_elems), kWhere,
      absl::StrCat("strides ", k_stride, " / ", v_stride, " < row_elems ", layout.row_elems)));
  PI_RETURN_IF_ERROR(
      Require(d_kv != nullptr && d_slots != nullptr && d_k != nullptr && d_v != nullptr, kWhere,
              "null pointer"));
  const internal::KvGeometry g = internal::KvGeometryOf(layout);
  return Enqueue(s, kWhere, [&] {
    return internal::LaunchKvWrite(g, d_kv, layer, d_slots, d_k, k_stride, d_v, v_stride, n_rows,
                                   Raw(s));
  });
}

absl::Status KvCopySlot(Stream& s, const KvLayout& layout, void* d_kv, int64_t dst, int64_t src) {
  constexpr const char* kWhere = "KvCopySlot";
  PI_RETURN_IF_ERROR(CheckLayout(layout, kWhere));
  PI_RETURN_IF_ERROR(Require(dst >= 0 && src >= 0, kWhere, "negative slot"));
  PI_RETURN_IF_ERROR(Require(d_kv != nullptr, kWhere, "null pointer"));
  if (dst == src) return absl::OkStatus();
  const internal::KvGeometry g = internal::KvGeometryOf(layout);
  return Enqueue(s, kWhere, [&] { return internal::LaunchKvCopySlot(g, d_kv, dst, src, Raw(s)); });
}

absl::Status KvCopyBlock(Stream& s, const KvLayout& layout, void* d_kv, int64_t dst, int64_t src) {
  constexpr const char* kWhere = "KvCopyBlock";
  PI_RETURN_IF_ERROR(CheckLayout(layout, kWhere));
  PI_RETURN_IF_ERROR(Require(dst >= 0 && src >= 0, kWhere, "negative block"));
  PI_RETURN_IF_ERROR(Require(d_kv != nullptr, kWhere, "null pointer"));
  if (dst == src) return absl::OkStatus();
  const size_t bb = layout.block_bytes();
  auto* base = static_cast<uint8_t*>(d_kv);
  return CopyOnDevice(s, base + static_cast<size_t>(dst) * bb, base + static_cast<size_t>(src) * bb,
                      bb);
}

namespace {

// The checks shared by Attention and AttentionWithSplits (OK for n_rows = 0, which does nothing).
absl::Status CheckAttentionArgs(const KvLayout& layout, const void* d_kv, int32_t layer,
                                const float* d_q, int64_t q_stride, int64_t n_rows, int32_t n_heads,
                                int32_t n_kv_heads, int32_t head_dim, const int32_t* d_vis_offsets,
                                const int64_t* d_vis_slots, int32_t max_visible, float* d_out,
                                int64_t out_stride, const char* where) {
  PI_RETURN_IF_ERROR(CheckLayout(layout, where));
  PI_RETURN_IF_ERROR(Require(layer >= 0 && layer < layout.n_layers, where,
                             absl::StrCat("layer ", layer, " of ", layout.n_layers)));
  PI_RETURN_IF_ERROR(Require(n_rows >= 0, where, "negative n_rows"));
  PI_RETURN_IF_ERROR(
      Require(n_heads >= 1 && n_kv_heads >= 1 && n_heads % n_kv_heads == 0, where,
              absl::StrCat(n_heads, " query heads do not split into ", n_kv_heads, " KV heads")));
  PI_RETURN_IF_ERROR(Require(
      head_dim >= 1 && head_dim <= internal::kAttentionMaxHeadDim, where,
      absl::StrCat("head_dim ", head_dim, " not in [1, ", internal::kAttentionMaxHeadDim, "]")));
  PI_RETURN_IF_ERROR(Require(int64_t{n_kv_heads} * head_dim <= layout.row_elems, where,
                             absl::StrCat(n_kv_heads, " KV heads x ", head_dim,
                                          " do not fit a KV row of ", layout.row_elems)));
  if (n_rows == 0) return absl::OkStatus();
  const int64_t width = int64_t{n_heads} * head_dim;
  PI_RETURN_IF_ERROR(Require(n_rows == 1 || (q_stride >= width && out_stride >= width), where,
                             absl::StrCat("strides ", q_stride, " / ", out_stride, " < ", width)));
  PI_RETURN_IF_ERROR(Require(max_visible >= 1, where, "max_visible must be at least 1"));
  PI_RETURN_IF_ERROR(Require(FitsInt(n_rows * n_heads), where, "too many rows x heads"));
  return Require(d_kv != nullptr && d_q != nullptr && d_vis_offsets != nullptr &&
                     d_vis_slots != nullptr && d_out != nullptr,
                 where, "null pointer");
}

// Makes `ws` hold at least `bytes` on the stream's device. Growing frees the old memory, which
// kernels enqueued earlier on the stream may still read or write: the stream is drained first.
absl::Status EnsureWorkspace(Stream& s, DeviceBuffer& ws, size_t bytes, const char* where) {
  if (ws.get() == nullptr) {
    PI_ASSIGN_OR_RETURN(ws, DeviceBuffer::Allocate(s.device(), bytes));
    return absl::OkStatus();
  }
  PI_RETURN_IF_ERROR(Require(
      ws.device() == s.device(), where,
      absl::StrCat("workspace on device ", ws.device(), ", stream on device ", s.device())));
  if (ws.bytes() >= bytes) return absl::OkStatus();
  PI_RETURN_IF_ERROR(s.Synchronize());
  return ws.Reserve(std::max(bytes, 2 * ws.bytes()));
}

// Checked arguments, 1 <= splits <= kAttentionMaxSplits, n_rows >= 1.
absl::Status RunAttention(Stream& s, const KvLayout& layout, const void* d_kv, int32_t layer,
                          const float* d_q, int64_t q_stride, int64_t n_rows, int32_t n_heads,
                          int32_t n_kv_heads, int32_t head_dim, const int32_t* d_vis_offsets,
                          const int64_t* d_vis_slots, float* d_out, int64_t out_stride,
                          int32_t splits, DeviceBuffer* workspace, const char* where) {
  const int64_t pairs = n_rows * n_heads;
  PI_RETURN_IF_ERROR(Require(FitsInt(pairs * splits), where, "too many rows x heads x chunks"));
  float* scratch = nullptr;
  if (splits > 1) {
    PI_RETURN_IF_ERROR(Require(workspace != nullptr, where, "split attention needs a workspace"));
    const int64_t floats = internal::AttentionScratchFloats(pairs, splits, head_dim);
    PI_RETURN_IF_ERROR(
        EnsureWorkspace(s, *workspace, static_cast<size_t>(floats) * sizeof(float), where));
    scratch = workspace->as<float>();
  }
  const internal::KvGeometry g = internal::KvGeometryOf(layout);
  return Enqueue(s, where, [&] {
    return internal::LaunchAttention(g, d_kv, layer, d_q, q_stride, n_rows, n_heads, n_kv_heads,
                                     head_dim, d_vis_offsets, d_vis_slots, splits, scratch, d_out,
                                     out_stride, Raw(s));
  });
}

// Multiprocessors of `device`, asked once per device (the first 64 ordinals; others every time).
absl::StatusOr<int> SmCount(int device, const char* where) {
  constexpr int kCached = 64;
  static std::array<std::atomic<int>, kCached> cache{};
  if (device >= 0 && device < kCached) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int count = 0;
  PI_CUDA_RETURN_IF_ERROR(where,
                          cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (count < 1) count = 1;
  if (device >= 0 && device < kCached) cache[device].store(count, std::memory_order_relaxed);
  return count;
}

}  // namespace

int internal::AttentionSplits(int64_t n_rows, int32_t n_heads, int32_t max_visible, int sm_count) {
  const int64_t pairs = n_rows * n_heads;
  if (pairs < 1 || sm_count < 1 || pairs >= 2 * int64_t{sm_count}) return 1;
  constexpr int64_t kBlocksPerSm = 3, kMinChunkKeys = 32;
  int64_t splits = (kBlocksPerSm * sm_count + pairs - 1) / pairs;
  splits = std::min(splits, int64_t{max_visible} / kMinChunkKeys);
  splits = std::min<int64_t>(splits, kAttentionMaxSplits);
  return static_cast<int>(std::max<int64_t>(splits, 1));
}

absl::Status internal::AttentionWithSplits(Stream& s, const KvLayout& layout, const void* d_kv,
                                           int32_t layer, const float* d_q, int64_t q_stride,
                                           int64_t n_rows, int32_t n_heads, int32_t n_kv_heads,
                                           int32_t head_dim, const int32_t* d_vis_offsets,
                                           const int64_t* d_vis_slots, int32_t max_visible,
                                           float* d_out, int64_t out_stride, int32_t splits,
                                           DeviceBuffer* workspace) {
  constexpr const char* kWhere = "AttentionWithSplits";
  PI_RETURN_IF_ERROR(
      Require(splits >= 1 && splits <= kAttentionMaxSplits, kWhere,
              absl::StrCat("splits ", splits, " not in [1, ", kAttentionMaxSplits, "]")));
  PI_RETURN_IF_ERROR(CheckAttentionArgs(layout, d_kv, layer, d_q, q_stride, n_rows, n_heads,
                                        n_kv_heads, head_dim, d_vis_offsets, d_vis_slots,
                                        max_visible, d_out, out_stride, kWhere));
  if (n_rows == 0) return absl::OkStatus();
  return RunAttention(s, layout, d_kv, layer, d_q, q_stride, n_rows, n_heads, n_kv_heads, head_dim,
                      d_vis_offsets, d_vis_slots, d_out, out_stride, splits, workspace, kWhere);
}

absl::Status Attention(Stream& s, const KvLayout& layout, const void* d_kv, int32_t layer,
                       const float* d_q, int64_t q_stride, int64_t n_rows, int32_t n_heads,
                       int32_t n_kv_heads, int32_t head_dim, const int32_t* d_vis_offsets,
                       const int64_t* d_vis_slots, int32_t max_visible, float* d_out,
                       int64_t out_stride, DeviceBuffer* workspace) {
  constexpr const char* kWhere = "Attention";
  PI_RETURN_IF_ERROR(CheckAttentionArgs(layout, d_kv, layer, d_q, q_stride, n_rows, n_heads,
                                        n_kv_heads, head_dim, d_vis_offsets, d_vis_slots,
                                        max_visible, d_out, out_stride, kWhere));
  if (n_rows == 0) return absl::OkStatus();
  int splits = 1;
  if (workspace != nullptr) {
    PI_ASSIGN_OR_RETURN(const int sm_count, SmCount(s.device(), kWhere));
    splits = internal::AttentionSplits(n_rows, n_heads, max_visible, sm_count);
  }
  return RunAttention(s, layout, d_kv, layer, d_q, q_stride, n_rows, n_heads, n_kv_heads, head_dim,
                      d_vis_offsets, d_vis_slots, d_out, out_stride, splits, workspace, kWhere);
}

absl::Status SwiGlu(Stream& s, const float* d_gate, const float* d_up, float* d_out, int64_t n) {
  constexpr const char* kWhere = "SwiGlu";
  PI_RETURN_IF_ERROR(Require(n >= 0, kWhere, "negative n"));
  if (n == 0) return absl::OkStatus();
  PI_RETURN_IF_ERROR(
      Require(d_gate != nullptr && d_up != nullptr && d_out != nullptr, kWhere, "null pointer"));
  return Enqueue(s, kWhere, [&] { return internal::LaunchSwiGlu(d_gate, d_up, d_out, n, Raw(s)); });
}

absl::Status AddInPlace(Stream& s, float* d_x, const float* d_y, int64_t n) {
  constexpr const char* kWhere = "AddInPlace";
  PI_RETURN_IF_ERROR(Require(n >= 0, kWhere, "negative n"));
  if (n == 0) return absl::OkStatus();
  PI_RETURN_IF_ERROR(Require(d_x != nullptr && d_y != nullptr, kWhere, "null pointer"));
  return Enqueue(s, kWhere, [&] { return internal::LaunchAddInPlace(d_x, d_y, n, Raw(s)); });
}

absl::Status GatherRows(Stream& s, const float* d_in, const int32_t* d_rows, int64_t n_out,
                        int64_t n, float* d_out) {
  constexpr const char* kWhere = "GatherRows";
  PI_RETURN_IF_ERROR(Require(n_out >= 0 && n >= 0, kWhere, "negative sizes"));
  if (n_out == 0 || n == 0) return absl::OkStatus();
  PI_RETURN_IF_ERROR(
      Require(d_in != nullptr && d_rows != nullptr && d_out != nullptr, kWhere, "null pointer"));
  PI_RETURN_IF_ERROR(Require(d_out != d_in, kWhere, "d_out must not alias d_in"));
  return Enqueue(s, kWhere,
                 [&] { return internal::LaunchGatherRows(d_in, d_rows, n_out, n, d_out, Raw(s)); });
}

}  // namespace pipeinfer::cuda
