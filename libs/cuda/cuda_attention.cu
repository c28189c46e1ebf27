// Device side of Attention: the chunk kernel (one block per (row, head, chunk); with one chunk per
// pair it is the single-pass kernel and writes the output itself) and the combine kernel of the
// split path, plus AttentionOnHost, which runs the same per-lane code on the host for tests. The
// layout of the work is described in cuda_attention.cuh.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda/cuda_attention.cuh"
#include "cuda/cuda_hd.cuh"
#include "cuda/cuda_launch.h"

namespace pipeinfer::cuda::internal {
namespace {

constexpr int kCombineThreads = 128;

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Block b handles pair b / splits (row pair / n_heads, head pair % n_heads) and chunk b % splits
// of the row's visible entries. `scratch` is null for splits = 1: the block then writes the
// normalized output. `out` may be `q` (same strides): with one chunk a block reads its query head
// before it writes the same head of the output, and with several only the combine kernel, which
// runs after every chunk block, writes the output.
template <int P>
__global__ void __launch_bounds__(kAttnWarps * 32)
    AttentionChunkKernel(KvGeometry g, const uint8_t* __restrict__ kv, int layer, const float* q,
                         int64_t q_stride, int n_heads, int group, int head_dim, float scale,
                         const int32_t* __restrict__ offsets, const int64_t* __restrict__ slots,
                         int splits, float* scratch, float* out, int64_t out_stride) {
  __shared__ float sm_m[kAttnWarps], sm_l[kAttnWarps];
  __shared__ float sm_o[kAttnWarps][32 * P];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t pair = blockIdx.x / splits;
  const int chunk = static_cast<int>(blockIdx.x % splits);
  const int64_t row = pair / n_heads;
  const int h = static_cast<int>(pair % n_heads);
  const int64_t head_off = static_cast<int64_t>(h / group) * head_dim;  // in the K/V row

  AttnLane<P> s;
  AttnLaneInit(s, q + row * q_stride + static_cast<int64_t>(h) * head_dim, head_dim, lane);
  const AttnRange r = AttnChunk(offsets[row], offsets[row + 1], splits, chunk);
  for (int32_t j = r.begin + warp; j < r.end; j += kAttnStep) {
    AttnStepData<P> st;
    AttnLoadStep(g, kv, layer, slots, j, r.end, head_off, head_dim, lane, s, st);
    float score[kAttnUnroll];
#pragma unroll
    for (int u = 0; u < kAttnUnroll; ++u) {
      const float dot = WarpSum(st.dot[u]) * scale;
      score[u] = st.valid[u] ? dot : -INFINITY;
    }
    AttnUpdate(s, score, st);
  }
  if (lane == 0) {
    sm_m[warp] = s.m;
    sm_l[warp] = s.l;
  }
#pragma unroll
  for (int i = 0; i < P; ++i) {
    const int d = lane + 32 * i;
    if (d < head_dim) sm_o[warp][d] = s.o[i];
  }
  __syncthreads();
  if (scratch == nullptr) {
    float* oh = out + row * out_stride + static_cast<int64_t>(h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
      oh[d] = AttnFinal(AttnMerge(kAttnWarps, sm_m, sm_l, &sm_o[0][d], 32 * P));
    }
    return;
  }
  const AttnParts parts = AttnPartsOf(scratch, static_cast<int64_t>(gridDim.x));
  const int64_t p = blockIdx.x;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    const AttnMerged m = AttnMerge(kAttnWarps, sm_m, sm_l, &sm_o[0][d], 32 * P);
    parts.o[p * head_dim + d] = m.o;
    if (d == 0) {
      parts.m[p] = m.m;
      parts.l[p] = m.l;
    }
  }
}

// One block per (row, head) pair: merges the pair's partials into its output.
__global__ void __launch_bounds__(kCombineThreads)
    AttentionCombineKernel(float* scratch, int64_t n_parts, int splits, int n_heads, int head_dim,
                           float* out, int64_t out_stride) {
  const AttnParts parts = AttnPartsOf(scratch, n_parts);
  const int64_t pair = blockIdx.x;
  float* oh = out + (pair / n_heads) * out_stride + (pair % n_heads) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    oh[d] = AttnCombineAt(parts, splits, head_dim, pair, d);
  }
}

}  // namespace

cudaError_t LaunchAttention(const KvGeometry& g, const void* kv, int layer, const float* q,
                            int64_t q_stride, int64_t n_rows, int n_heads, int n_kv_heads,
                            int head_dim, const int32_t* vis_offsets, const int64_t* vis_slots,
                            int splits, float* scratch, float* out, int64_t out_stride,
                            cudaStream_t stream) {
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  const int64_t pairs = n_rows * n_heads;
  const int64_t n_parts = pairs * splits;
  const auto* kv_bytes = static_cast<const uint8_t*>(kv);
  float* parts = splits > 1 ? scratch : nullptr;
  auto chunk_kernel = AttentionChunkKernel<8>;
  switch (AttnPerLane(head_dim)) {
    case 2:
      chunk_kernel = AttentionChunkKernel<2>;
      break;
    case 4:
      chunk_kernel = AttentionChunkKernel<4>;
      break;
    default:
      break;
  }
  chunk_kernel<<<static_cast<unsigned>(n_parts), kAttnWarps * 32, 0, stream>>>(
      g, kv_bytes, layer, q, q_stride, n_heads, n_heads / n_kv_heads, head_dim, scale, vis_offsets,
      vis_slots, splits, parts, out, out_stride);
  if (splits == 1) return cudaGetLastError();
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  AttentionCombineKernel<<<static_cast<unsigned>(pairs), kCombineThreads, 0, stream>>>(
      scratch, n_parts, splits, n_heads, head_dim, out, out_stride);
  return cudaGetLastError();
}

namespace {

// The butterfly of WarpSum on 32 host values (every lane ends with the same sum).
void WarpSumOnHost(float v[32]) {
  for (int off = 16; off > 0; off >>= 1) {
    float next[32];
    for (int lane = 0; lane < 32; ++lane) next[lane] = v[lane] + v[lane ^ off];
    for (int lane = 0; lane < 32; ++lane) v[lane] = next[lane];
  }
}

template <int P>
void AttentionOnHostImpl(const KvGeometry& g, const void* kv_bytes, int layer, const float* q,
                         int64_t q_stride, int64_t n_rows, int n_heads, int n_kv_heads,
                         int head_dim, const int32_t* offsets, const int64_t* slots, int splits,
                         float* out, int64_t out_stride) {
  const auto* kv = static_cast<const uint8_t*>(kv_bytes);
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  const int group = n_heads / n_kv_heads;
  const int64_t pairs = n_rows * n_heads, n_parts = pairs * splits;
  std::vector<float> scratch(splits > 1 ? AttentionScratchFloats(pairs, splits, head_dim) : 0);
  const AttnParts parts = AttnPartsOf(scratch.data(), n_parts);
  // The chunk kernel, block by block and warp by warp; the lanes of a warp step together.
  std::vector<float> sm_o(kAttnWarps * 32 * P);
  for (int64_t b = 0; b < n_parts; ++b) {
    const int64_t pair = b / splits, row = pair / n_heads;
    const int chunk = static_cast<int>(b % splits), h = static_cast<int>(pair % n_heads);
    const int64_t head_off = static_cast<int64_t>(h / group) * head_dim;
    const AttnRange r = AttnChunk(offsets[row], offsets[row + 1], splits, chunk);
    float sm_m[kAttnWarps], sm_l[kAttnWarps];
    for (int warp = 0; warp < kAttnWarps; ++warp) {
      AttnLane<P> s[32];
      for (int lane = 0; lane < 32; ++lane) {
        AttnLaneInit(s[lane], q + row * q_stride + static_cast<int64_t>(h) * head_dim, head_dim,
                     lane);
      }
      for (int32_t j = r.begin + warp; j < r.end; j += kAttnStep) {
        AttnStepData<P> st[32];
        for (int lane = 0; lane < 32; ++lane) {
          AttnLoadStep(g, kv, layer, slots, j, r.end, head_off, head_dim, lane, s[lane], st[lane]);
        }
        float score[32][kAttnUnroll];
        for (int u = 0; u < kAttnUnroll; ++u) {
          float dot[32];
          for (int lane = 0; lane < 32; ++lane) dot[lane] = st[lane].dot[u];
          WarpSumOnHost(dot);
          for (int lane = 0; lane < 32; ++lane) {
            score[lane][u] = st[lane].valid[u] ? dot[lane] * scale : -INFINITY;
          }
        }
        for (int lane = 0; lane < 32; ++lane) AttnUpdate(s[lane], score[lane], st[lane]);
      }
      sm_m[warp] = s[0].m;
      sm_l[warp] = s[0].l;
      for (int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < P; ++i) {
          const int d = lane + 32 * i;
          if (d < head_dim) sm_o[warp * 32 * P + d] = s[lane].o[i];
        }
      }
    }
    for (int d = 0; d < head_dim; ++d) {
      const AttnMerged m = AttnMerge(kAttnWarps, sm_m, sm_l, &sm_o[d], 32 * P);
      if (splits == 1) {
        out[row * out_stride + static_cast<int64_t>(h) * head_dim + d] = AttnFinal(m);
      } else {
        parts.o[b * head_dim + d] = m.o;
        if (d == 0) {
          parts.m[b] = m.m;
          parts.l[b] = m.l;
        }
      }
    }
  }
  if (splits == 1) return;
  // The combine kernel.
  for (int64_t pair = 0; pair < pairs; ++pair) {
    float* oh = out + (pair / n_heads) * out_stride + (pair % n_heads) * head_dim;
    for (int d = 0; d < head_dim; ++d) oh[d] = AttnCombineAt(parts, splits, head_dim, pair, d);
  }
}

}  // namespace

void AttentionOnHost(const KvGeometry& g, const void* kv, int layer, const float* q,
                     int64_t q_stride, int64_t n_rows, int n_heads, int n_kv_heads, int head_dim,
                     const int32_t* offsets, const int64_t* slots, int splits, float* out,
                     int64_t out_stride) {
  switch (AttnPerLane(head_dim)) {
    case 2:
      return AttentionOnHostImpl<2>(g, kv, layer, q, q_stride, n_rows, n_heads, n_kv_heads,
                                    head_dim, offsets, slots, splits, out, out_stride);
    case 4:
      return AttentionOnHostImpl<4>(g, kv, layer, q, q_stride, n_rows, n_heads, n_kv_heads,
                                    head_dim, offsets, slots, splits, out, out_stride);
    default:
      return AttentionOnHostImpl<8>(g, kv, layer, q, q_stride, n_rows, n_heads, n_kv_heads,
                                    head_dim, offsets, slots, splits, out, out_stride);
  }
}

}  // namespace pipeinfer::cuda::internal
