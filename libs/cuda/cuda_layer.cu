// Device side of the layer kernels: norms, RoPE, paged KV writes and copies, SwiGLU, residual adds
// and row gathers (attention is in cuda_attention.cu). All math is F32; KV rows are F16 or F32.
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
