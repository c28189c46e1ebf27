// Internal: the parts of the CUDA library that run on the host without a device (the argument
// checks of UploadMatrix, and host builds of the kernels' element-level code: weight decoding, KV
// addressing, RoPE, attention), declared without CUDA headers so that tests can call them on any
// machine; plus AttentionWithSplits, a test entry that does need a device.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "cuda/cuda_decode_host.h"
#include "cuda/cuda_kv_geometry.h"
#include "cuda/cuda_ops.h"
#include "gguf/tensor_type.h"

namespace pipeinfer::cuda::internal {

// True when `type` stays in its GGUF block layout on the device (F32, F16, BF16, Q8_0, Q4_0, Q4_K,
// Q6_K); other types the CPU kernels decode are converted to F16 at upload.
bool KeptOnDevice(gguf::TensorType type);

// OK when UploadMatrix can upload this slice; INVALID_ARGUMENT for bad sizes, slices or alignment
// (col0 and n_cols must be multiples of the block size), UNIMPLEMENTED for a type that is neither
// kept on the device nor decodable by the CPU kernels.
absl::Status CheckUploadArgs(gguf::TensorType type, const uint8_t* host, int64_t rows, int64_t cols,
                             size_t host_row_bytes, int64_t row0, int64_t n_rows, int64_t col0,
                             int64_t n_cols);

// Host builds of the decoders and the mat-vec lane code: cuda_decode_host.h.

// The byte geometry the KV kernels use for `layout`.
KvGeometry KvGeometryOf(const KvLayout& layout);

// Host runs of the element-level code of the KvWrite, KvCopySlot and Rope kernels (the same
// functions, compiled for the host; arguments as for the public calls, host pointers).
void KvWriteOnHost(const KvGeometry& g, void* kv, int layer, const int64_t* slots, const float* k,
                   int64_t k_stride, const float* v, int64_t v_stride, int64_t n_rows);
void KvCopySlotOnHost(const KvGeometry& g, void* kv, int64_t dst, int64_t src);
void RopeOnHost(float* x, int64_t n_rows, int n_heads, int head_dim, int64_t stride, int n_rot,
                bool neox, const float* cos_v, const float* sin_v);

// The number of key chunks Attention cuts each (row, head) pair's visible keys into on a device
// with `sm_count` multiprocessors (1: the single-pass kernel).
int AttentionSplits(int64_t n_rows, int32_t n_heads, int32_t max_visible, int sm_count);

// The attention kernels run on the host (cuda_attention.cu compiled for the host; host pointers,
// arguments as for Attention): every block of the chunk kernel, lane by lane with the kernels'
// per-lane code and the warp sums in the device's order, then the combine kernel when splits > 1.
void AttentionOnHost(const KvGeometry& g, const void* kv, int layer, const float* q,
                     int64_t q_stride, int64_t n_rows, int n_heads, int n_kv_heads, int head_dim,
                     const int32_t* vis_offsets, const int64_t* vis_slots, int splits, float* out,
                     int64_t out_stride);

// Attention on the device with a given number of chunks (1..32) instead of the one Attention
// chooses, so that device tests cover every path on any GPU. workspace may be null for splits = 1.
absl::Status AttentionWithSplits(Stream& s, const KvLayout& layout, const void* d_kv, int32_t layer,
                                 const float* d_q, int64_t q_stride, int64_t n_rows,
                                 int32_t n_heads, int32_t n_kv_heads, int32_t head_dim,
                                 const int32_t* d_vis_offsets, const int64_t* d_vis_slots,
                                 int32_t max_visible, float* d_out, int64_t out_stride,
                                 int32_t splits, DeviceBuffer* workspace);

}  // namespace pipeinfer::cuda::internal
