// Internal: the kernel launchers of cuda_matmul.cu and cuda_layer.cu, called by the host code in
// the .cc files after it has checked the arguments and made the stream's device current. Each
// launcher only enqueues work and returns the launch error (cudaGetLastError); the .cu files see
// no absl, which keeps nvcc's work small. Sizes are assumed valid here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "cuda/cuda_decode_host.h"
#include "cuda/cuda_kv_geometry.h"
#include "gguf/tensor_type.h"

namespace pipeinfer::cuda::internal {

// --- cuda_matmul.cu ---------------------------------------------------------------------------
// True for the types the device kernels decode (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K).
bool DeviceDecodes(gguf::TensorType type);
// Weights per block of a device-decoded type (1 for F32/F16/BF16) and bytes per block.
int DeviceBlockSize(gguf::TensorType type);
int DeviceBlockBytes(gguf::TensorType type);

// Host builds of the decoders and the mat-vec lane code, for tests: cuda_decode_host.h.

// y[t * y_stride + r] = sum_c W[r][c] * x[t * x_stride + c] for t < n_tokens (1..8), r < rows;
// W: `rows` rows of `cols` weights, `row_bytes` apart, in the GGUF layout of `type`.
cudaError_t LaunchMatVec(gguf::TensorType type, const uint8_t* w, int64_t rows, int64_t cols,
                         size_t row_bytes, const float* x, int64_t x_stride, int n_tokens, float* y,
                         int64_t y_stride, cudaStream_t stream);
// Decodes `rows` rows of W into out[rows][cols] (F16 bits, packed).
cudaError_t LaunchDequantToHalf(gguf::TensorType type, const uint8_t* w, int64_t rows, int64_t cols,
                                size_t row_bytes, uint16_t* out, cudaStream_t stream);
// out[r][c] = half(x[r * x_stride + c]) for r < rows, c < cols (out packed, ld = cols).
cudaError_t LaunchFloatToHalfRows(const float* x, int64_t x_stride, int64_t rows, int64_t cols,
                                  uint16_t* out, cudaStream_t stream);

// --- cuda_layer.cu ----------------------------------------------------------------------------
cudaError_t LaunchRmsNormRows(const float* x, const float* w, int64_t n_rows, int64_t n, float eps,
                              float* out, cudaStream_t stream);
cudaError_t LaunchAddBiasRows(float* x, const float* b, int64_t n_rows, int64_t n, int64_t stride,
                              cudaStream_t stream);
cudaError_t LaunchHeadRmsNorm(float* x, const float* w, int64_t n_rows, int n_heads, int head_dim,
                              int64_t stride, float eps, cudaStream_t stream);
cudaError_t LaunchRope(float* x, int64_t n_rows, int n_heads, int head_dim, int64_t stride,
                       int n_rot, bool neox, const float* cos_v, const float* sin_v,
                       cudaStream_t stream);

cudaError_t LaunchKvWrite(const KvGeometry& g, void* kv, int layer, const int64_t* slots,
                          const float* k, int64_t k_stride, const float* v, int64_t v_stride,
                          int64_t n_rows, cudaStream_t stream);
cudaError_t LaunchKvCopySlot(const KvGeometry& g, void* kv, int64_t dst, int64_t src,
                             cudaStream_t stream);

// Host runs of the element-level code of KvWrite, KvCopySlot and Rope (same arguments), for tests
// (declared for them in cuda_host.h).
void KvWriteOnHost(const KvGeometry& g, void* kv, int layer, const int64_t* slots, const float* k,
                   int64_t k_stride, const float* v, int64_t v_stride, int64_t n_rows);
void KvCopySlotOnHost(const KvGeometry& g, void* kv, int64_t dst, int64_t src);
void RopeOnHost(float* x, int64_t n_rows, int n_heads, int head_dim, int64_t stride, int n_rot,
                bool neox, const float* cos_v, const float* sin_v);

cudaError_t LaunchSwiGlu(const float* gate, const float* up, float* out, int64_t n,
                         cudaStream_t stream);
cudaError_t LaunchAddInPlace(float* x, const float* y, int64_t n, cudaStream_t stream);
cudaError_t LaunchGatherRows(const float* in, const int32_t* rows, int64_t n_out, int64_t n,
                             float* out, cudaStream_t stream);

// --- cuda_attention.cu ------------------------------------------------------------------------
// Largest head_dim the attention kernels take, and the most key chunks per (row, head) pair.
inline constexpr int kAttentionMaxHeadDim = 256;
inline constexpr int kAttentionMaxSplits = 32;
// Floats of scratch the split path needs: per partial (pair, chunk) a maximum, a normalizer and
// head_dim sums.
inline int64_t AttentionScratchFloats(int64_t n_pairs, int splits, int head_dim) {
  return n_pairs * splits * (2 + static_cast<int64_t>(head_dim));
}
// Attention of n_rows query rows (arguments as for cuda::Attention), each (row, head) pair's
// visible entries cut into `splits` chunks (1..kAttentionMaxSplits). splits = 1: one kernel writes
// the output. More: one block per (pair, chunk) writes a partial to `scratch` (at least
// AttentionScratchFloats floats), then a combine kernel merges each pair's partials into the
// output.
cudaError_t LaunchAttention(const KvGeometry& g, const void* kv, int layer, const float* q,
                            int64_t q_stride, int64_t n_rows, int n_heads, int n_kv_heads,
                            int head_dim, const int32_t* vis_offsets, const int64_t* vis_slots,
                            int splits, float* scratch, float* out, int64_t out_stride,
                            cudaStream_t stream);
// The same work on the host (host pointers), block by block and lane by lane with the kernels' own
// per-lane code, for tests (declared for them in cuda_host.h).
void AttentionOnHost(const KvGeometry& g, const void* kv, int layer, const float* q,
                     int64_t q_stride, int64_t n_rows, int n_heads, int n_kv_heads, int head_dim,
                     const int32_t* vis_offsets, const int64_t* vis_slots, int splits, float* out,
                     int64_t out_stride);

}  // namespace pipeinfer::cuda::internal
