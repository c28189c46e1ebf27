// Device side of the layer kernels: norms, RoPE, paged KV writes and copies, attention over
// visibility lists, SwiGLU, residual adds and row gathers. All math is F32; KV rows are F16 or F32.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/cuda_hd.cuh"
#include "cuda/cuda_launch.h"

namespace pipeinfer::cuda::internal {
namespace {

constexpr int kThreads = 256;  // threads of element-wise and per-row kernels
constexpr int kHeadWarps = 4;  // (row, head) pairs per block of the per-head norm
constexpr int kAttnWarps = 8;  // warps sharing one (row, head) in the attention kernel
constexpr int kAttnPerLane = kAttentionMaxHeadDim / 32;

unsigned GridFor(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > (1 << 20) ? (1 << 20) : blocks));
}

// Grid-stride loop index helpers.
__device__ __forceinline__ int64_t FirstIndex() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t GridStride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum of `v` over the block (blockDim.x == kThreads); every thread gets the result.
__device__ float BlockSum(float v) {
  __shared__ float partial[kThreads / 32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpSum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < kThreads / 32 ? partial[lane] : 0.0f;
    s = WarpSum(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

// One block per row. out may equal x: each thread reads its elements again before writing them,
// after the reduction has read everything.
__global__ void RmsNormRowsKernel(const float* x, const float* __restrict__ w, int64_t n, float eps,
                                  float* out) {
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * n;
  float* o = out + static_cast<int64_t>(blockIdx.x) * n;
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) ss += xr[j] * xr[j];
  ss = BlockSum(ss);
  const float scale = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) o[j] = (xr[j] * scale) * w[j];
}

__global__ void AddBiasRowsKernel(float* x, const float* __restrict__ b, int64_t n_rows, int64_t n,
                                  int64_t stride) {
  for (int64_t i = FirstIndex(); i < n_rows * n; i += GridStride()) {
    const int64_t r = i / n, j = i % n;
    x[r * stride + j] += b[j];
  }
}

// One warp per (row, head) pair; pair p = row * n_heads + head.
__global__ void HeadRmsNormKernel(float* x, const float* __restrict__ w, int64_t n_pairs,
                                  int n_heads, int head_dim, int64_t stride, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kHeadWarps + (threadIdx.x >> 5);
  if (p >= n_pairs) return;  // whole warp
  float* xh = x + (p / n_heads) * stride + (p % n_heads) * static_cast<int64_t>(head_dim);
  float ss = 0.0f;
  for (int j = lane; j < head_dim; j += 32) ss += xh[j] * xh[j];
  ss = WarpSum(ss);
  const float scale = 1.0f / sqrtf(ss / static_cast<float>(head_dim) + eps);
  for (int j = lane; j < head_dim; j += 32) xh[j] = (xh[j] * scale) * w[j];
}

// --- Element-level code shared by the kernels and their host runs (KvWriteOnHost, ...) ---------

// Rotates pair `idx` of the (row, head, pair) enumeration. Written with non-fusing products and
// sums so that the rotation rounds exactly like engine::RopeRotate.
PI_HD void RopeAt(float* x, int n_heads, int head_dim, int64_t stride, int n_rot, bool neox,
                  const float* cos_v, const float* sin_v, int64_t idx) {
  const int half = n_rot / 2;
  const int i = static_cast<int>(idx % half);
  const int64_t rh = idx / half;
  const int h = static_cast<int>(rh % n_heads);
  const int64_t r = rh / n_heads;
  float* xh = x + r * stride + static_cast<int64_t>(h) * head_dim;
  const int a = neox ? i : 2 * i;
  const int b = neox ? i + half : 2 * i + 1;
  const float c = cos_v[r * half + i], s = sin_v[r * half + i];
  const float x0 = xh[a], x1 = xh[b];
  xh[a] = SubRn(MulRn(x0, c), MulRn(x1, s));
  xh[b] = AddRn(MulRn(x0, s), MulRn(x1, c));
}

PI_HD int64_t KeyRowOffset(const KvGeometry& g, int layer, int64_t slot) {
  return (slot / g.block_tokens) * g.block_bytes + layer * g.layer_bytes +
         (slot % g.block_tokens) * g.row_bytes;
}

// Element `i` of the (token, element) enumeration of KvWrite: stores the K and the V element.
// Negative slots are skipped.
PI_HD void KvWriteAt(const KvGeometry& g, uint8_t* kv, int layer, const int64_t* slots,
                     const float* k, int64_t k_stride, const float* v, int64_t v_stride,
                     int64_t i) {
  const int64_t r = i / g.row_elems, e = i % g.row_elems;
  const int64_t slot = slots[r];
  if (slot < 0) return;
  uint8_t* krow = kv + KeyRowOffset(g, layer, slot);
  uint8_t* vrow = krow + static_cast<int64_t>(g.block_tokens) * g.row_bytes;
  const float kval = k[r * k_stride + e], vval = v[r * v_stride + e];
  if (g.f16) {
    StoreAs<uint16_t>(krow + 2 * e, FloatToHalfBits(kval));
    StoreAs<uint16_t>(vrow + 2 * e, FloatToHalfBits(vval));
  } else {
    StoreAs<float>(krow + 4 * e, kval);
    StoreAs<float>(vrow + 4 * e, vval);
  }
}

// Unit `i` of KvCopySlot: the 2 * n_layers rows (K and V of every layer) of a slot, in 2-byte
// units (row_bytes is a multiple of 2 for both element types).
PI_HD void KvCopyAt(const KvGeometry& g, uint8_t* kv, int64_t dst, int64_t src, int64_t i) {
  const int64_t units = g.row_bytes / 2;
  const int64_t row = i / units, u = i % units;
  const int layer = static_cast<int>(row / 2);
  const int64_t v_off = (row % 2) * g.block_tokens * g.row_bytes;
  const uint16_t val = LoadAs<uint16_t>(kv + KeyRowOffset(g, layer, src) + v_off + 2 * u);
  StoreAs<uint16_t>(kv + KeyRowOffset(g, layer, dst) + v_off + 2 * u, val);
}

PI_HD int64_t KvCopyUnits(const KvGeometry& g) {
  return 2 * static_cast<int64_t>(g.n_layers) * (g.row_bytes / 2);
}

// --- Kernels
// --------------------------------------------------------------------------------------

// One thread per (row, head, pair).
__global__ void RopeKernel(float* x, int64_t n_rows, int n_heads, int head_dim, int64_t stride,
                           int n_rot, bool neox, const float* __restrict__ cos_v,
                           const float* __restrict__ sin_v) {
  const int64_t total = n_rows * n_heads * (n_rot / 2);
  for (int64_t idx = FirstIndex(); idx < total; idx += GridStride()) {
    RopeAt(x, n_heads, head_dim, stride, n_rot, neox, cos_v, sin_v, idx);
  }
}

__device__ __forceinline__ float LoadKv(const uint8_t* row, int64_t i, bool f16) {
  return f16 ? __half2float(reinterpret_cast<const __half*>(row)[i])
             : reinterpret_cast<const float*>(row)[i];
}

// One thread per (token, element).
__global__ void KvWriteKernel(KvGeometry g, uint8_t* kv, int layer,
                              const int64_t* __restrict__ slots, const float* __restrict__ k,
                              int64_t k_stride, const float* __restrict__ v, int64_t v_stride,
                              int64_t n_rows) {
  const int64_t total = n_rows * g.row_elems;
  for (int64_t i = FirstIndex(); i < total; i += GridStride()) {
    KvWriteAt(g, kv, layer, slots, k, k_stride, v, v_stride, i);
  }
}

__global__ void KvCopySlotKernel(KvGeometry g, uint8_t* kv, int64_t dst, int64_t src) {
  const int64_t total = KvCopyUnits(g);
  for (int64_t i = FirstIndex(); i < total; i += GridStride()) KvCopyAt(g, kv, dst, src, i);
}

// One block per (row, query head): block b handles row b / n_heads, head b % n_heads. Its warps
// take the visible keys in turn (warp w: keys w, w + kAttnWarps, ...); for each key the lanes
// share the head's elements (lane l holds elements l, l + 32, ...), so K and V rows are read
// coalesced. Each warp keeps a running softmax (max m, normalizer l, weighted sum o); at the end
// the warps' partial results are rescaled to the common max and combined. `out` may be `q` (same
// strides): a block reads its own query head before it writes the same head of the output.
__global__ void __launch_bounds__(kAttnWarps * 32)
    AttentionKernel(KvGeometry g, const uint8_t* __restrict__ kv, int layer, const float* q,
                    int64_t q_stride, int n_heads, int group, int head_dim, float scale,
                    const int32_t* __restrict__ offsets, const int64_t* __restrict__ slots,
                    float* out, int64_t out_stride) {
  __shared__ float sm_m[kAttnWarps], sm_l[kAttnWarps];
  __shared__ float sm_o[kAttnWarps][kAttentionMaxHeadDim];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = blockIdx.x / n_heads;
  const int h = static_cast<int>(blockIdx.x % n_heads);
  const int64_t head_off = static_cast<int64_t>(h / group) * head_dim;  // in the K/V row

  float qv[kAttnPerLane], o[kAttnPerLane];
  const float* qh = q + row * q_stride + static_cast<int64_t>(h) * head_dim;
#pragma unroll
  for (int i = 0; i < kAttnPerLane; ++i) {
    const int d = lane + 32 * i;
    qv[i] = d < head_dim ? qh[d] : 0.0f;
    o[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int32_t begin = offsets[row], end = offsets[row + 1];
  for (int32_t j = begin + warp; j < end; j += kAttnWarps) {
    const int64_t slot = slots[j];
    if (slot < 0) continue;  // same j for the whole warp
    const uint8_t* krow = kv + KeyRowOffset(g, layer, slot);
    const uint8_t* vrow = krow + static_cast<int64_t>(g.block_tokens) * g.row_bytes;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kAttnPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < head_dim) dot += qv[i] * LoadKv(krow, head_off + d, g.f16);
    }
    const float score = WarpSum(dot) * scale;
    const float m_new = fmaxf(m, score);
    if (m_new == -INFINITY) continue;    // only -inf scores so far: nothing to add
    const float corr = expf(m - m_new);  // 0 for the first key (m = -inf)
    const float p = expf(score - m_new);
    l = l * corr + p;
#pragma unroll
    for (int i = 0; i < kAttnPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < head_dim) o[i] = o[i] * corr + p * LoadKv(vrow, head_off + d, g.f16);
    }
    m = m_new;
  }
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < kAttnPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < head_dim) sm_o[warp][d] = o[i];
  }
  __syncthreads();
  float mmax = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) mmax = fmaxf(mmax, sm_m[w]);
  float* oh = out + row * out_stride + static_cast<int64_t>(h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float num = 0.0f, den = 0.0f;
    for (int w = 0; w < kAttnWarps; ++w) {
      if (sm_m[w] == -INFINITY) continue;  // this warp saw no key
      const float f = expf(sm_m[w] - mmax);
      num += sm_o[w][d] * f;
      den += sm_l[w] * f;
    }
    oh[d] = den > 0.0f ? num / den : 0.0f;
  }
}

// out may be gate or up (each element is read before it is written, by the same thread).
__global__ void SwiGluKernel(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = FirstIndex(); i < n; i += GridStride()) {
    const float gv = gate[i];
    out[i] = gv / (1.0f + expf(-gv)) * up[i];
  }
}

__global__ void AddInPlaceKernel(float* x, const float* y, int64_t n) {
  for (int64_t i = FirstIndex(); i < n; i += GridStride()) x[i] += y[i];
}

// out row i = in row rows[i]; a negative index gives a row of zeros.
__global__ void GatherRowsKernel(const float* __restrict__ in, const int32_t* __restrict__ rows,
                                 int64_t n_out, int64_t n, float* __restrict__ out) {
  for (int64_t i = FirstIndex(); i < n_out * n; i += GridStride()) {
    const int64_t r = i / n, j = i % n;
    const int32_t src = rows[r];
    out[i] = src >= 0 ? in[static_cast<int64_t>(src) * n + j] : 0.0f;
  }
}

}  // namespace

cudaError_t LaunchRmsNormRows(const float* x, const float* w, int64_t n_rows, int64_t n, float eps,
                              float* out, cudaStream_t stream) {
  RmsNormRowsKernel<<<static_cast<unsigned>(n_rows), kThreads, 0, stream>>>(x, w, n, eps, out);
  return cudaGetLastError();
}

cudaError_t LaunchAddBiasRows(float* x, const float* b, int64_t n_rows, int64_t n, int64_t stride,
                              cudaStream_t stream) {
  AddBiasRowsKernel<<<GridFor(n_rows * n), kThreads, 0, stream>>>(x, b, n_rows, n, stride);
  return cudaGetLastError();
}

cudaError_t LaunchHeadRmsNorm(float* x, const float* w, int64_t n_rows, int n_heads, int head_dim,
                              int64_t stride, float eps, cudaStream_t stream) {
  const int64_t pairs = n_rows * n_heads;
  const auto blocks = static_cast<unsigned>((pairs + kHeadWarps - 1) / kHeadWarps);
  HeadRmsNormKernel<<<blocks, kHeadWarps * 32, 0, stream>>>(x, w, pairs, n_heads, head_dim, stride,
                                                            eps);
  return cudaGetLastError();
}

cudaError_t LaunchRope(float* x, int64_t n_rows, int n_heads, int head_dim, int64_t stride,
                       int n_rot, bool neox, const float* cos_v, const float* sin_v,
                       cudaStream_t stream) {
  const int64_t total = n_rows * n_heads * (n_rot / 2);
  RopeKernel<<<GridFor(total), kThreads, 0, stream>>>(x, n_rows, n_heads, head_dim, stride, n_rot,
                                                      neox, cos_v, sin_v);
  return cudaGetLastError();
}

cudaError_t LaunchKvWrite(const KvGeometry& g, void* kv, int layer, const int64_t* slots,
                          const float* k, int64_t k_stride, const float* v, int64_t v_stride,
                          int64_t n_rows, cudaStream_t stream) {
  KvWriteKernel<<<GridFor(n_rows * g.row_elems), kThreads, 0, stream>>>(
      g, static_cast<uint8_t*>(kv), layer, slots, k, k_stride, v, v_stride, n_rows);
  return cudaGetLastError();
}

cudaError_t LaunchKvCopySlot(const KvGeometry& g, void* kv, int64_t dst, int64_t src,
                             cudaStream_t stream) {
  const int64_t total = KvCopyUnits(g);
  KvCopySlotKernel<<<GridFor(total), kThreads, 0, stream>>>(g, static_cast<uint8_t*>(kv), dst, src);
  return cudaGetLastError();
}

cudaError_t LaunchAttention(const KvGeometry& g, const void* kv, int layer, const float* q,
                            int64_t q_stride, int64_t n_rows, int n_heads, int n_kv_heads,
                            int head_dim, const int32_t* vis_offsets, const int64_t* vis_slots,
                            float* out, int64_t out_stride, cudaStream_t stream) {
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  const auto blocks = static_cast<unsigned>(n_rows * n_heads);
  AttentionKernel<<<blocks, kAttnWarps * 32, 0, stream>>>(
      g, static_cast<const uint8_t*>(kv), layer, q, q_stride, n_heads, n_heads / n_kv_heads,
      head_dim, scale, vis_offsets, vis_slots, out, out_stride);
  return cudaGetLastError();
}

cudaError_t LaunchSwiGlu(const float* gate, const float* up, float* out, int64_t n,
                         cudaStream_t stream) {
  SwiGluKernel<<<GridFor(n), kThreads, 0, stream>>>(gate, up, out, n);
  return cudaGetLastError();
}

cudaError_t LaunchAddInPlace(float* x, const float* y, int64_t n, cudaStream_t stream) {
  AddInPlaceKernel<<<GridFor(n), kThreads, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}

cudaError_t LaunchGatherRows(const float* in, const int32_t* rows, int64_t n_out, int64_t n,
                             float* out, cudaStream_t stream) {
  GatherRowsKernel<<<GridFor(n_out * n), kThreads, 0, stream>>>(in, rows, n_out, n, out);
  return cudaGetLastError();
}

void KvWriteOnHost(const KvGeometry& g, void* kv, int layer, const int64_t* slots, const float* k,
                   int64_t k_stride, const float* v, int64_t v_stride, int64_t n_rows) {
  for (int64_t i = 0; i < n_rows * g.row_elems; ++i) {
    KvWriteAt(g, static_cast<uint8_t*>(kv), layer, slots, k, k_stride, v, v_stride, i);
  }
}

void KvCopySlotOnHost(const KvGeometry& g, void* kv, int64_t dst, int64_t src) {
  for (int64_t i = 0; i < KvCopyUnits(g); ++i) KvCopyAt(g, static_cast<uint8_t*>(kv), dst, src, i);
}

void RopeOnHost(float* x, int64_t n_rows, int n_heads, int head_dim, int64_t stride, int n_rot,
                bool neox, const float* cos_v, const float* sin_v) {
  for (int64_t i = 0; i < n_rows * n_heads * (n_rot / 2); ++i) {
    RopeAt(x, n_heads, head_dim, stride, n_rot, neox, cos_v, sin_v, i);
  }
}

}  // namespace pipeinfer::cuda::internal
