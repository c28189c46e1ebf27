// Internal, for cuda_attention.cu: the pieces of the attention kernels that compile for the device
// and for the host alike (cuda_hd.cuh), so that tests without a GPU run the kernels' own chunking,
// per-lane loads, online softmax and merging on the host (AttentionOnHost) against a plain CPU
// attention.
//
// How the work is laid out. A block of kAttnWarps warps takes one chunk of one (query row, query
// head) pair. A row's visible-list entries [begin, end) are cut into `splits` chunks of
// ceil(n / splits) entries each (the last chunks shorter, possibly empty). Inside a chunk the block
// advances kAttnStep entries per step: in the step starting at entry j, warp w takes entries
// j + w + u * kAttnWarps for u < kAttnUnroll, and issues the K and V loads of all of them before it
// uses any (several rows in flight per warp instead of one dependent load chain). Lane l holds the
// head elements l, l + 32, ... of q, of every loaded K and V row, and of the accumulator.
//
// Each warp keeps an online softmax state: the running maximum m of its scores, the normalizer
// l = sum exp(score - m) and the unnormalized weighted sum o = sum exp(score - m) * v. States
// merge by rescaling to the larger maximum (AttnMerge). The block merges its warps' states; with
// one chunk per pair it writes the normalized result, with several it writes the merged state (a
// partial) to scratch and a combine kernel merges the pair's partials the same way.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/cuda_hd.cuh"
#include "cuda/cuda_kv_geometry.h"
#include "cuda/cuda_launch.h"

namespace pipeinfer::cuda::internal {

constexpr int kAttnWarps = 8;                        // warps of one block
constexpr int kAttnUnroll = 2;                       // entries a warp loads together in one step
constexpr int kAttnStep = kAttnWarps * kAttnUnroll;  // entries a block covers per step

// Head elements per lane: the kernels are built for heads of up to 64, 128 and 256 elements (the
// template argument P below), and a call takes the smallest that holds head_dim.
PI_HD int AttnPerLane(int head_dim) { return head_dim <= 64 ? 2 : head_dim <= 128 ? 4 : 8; }

// Entries [begin, end) of a row's visible list.
struct AttnRange {
  int32_t begin = 0, end = 0;
};

// Chunk `chunk` of `splits` of the entries [begin, end).
PI_HD AttnRange AttnChunk(int32_t begin, int32_t end, int splits, int chunk) {
  const int64_t n = static_cast<int64_t>(end) - begin;
  const int64_t len = (n + splits - 1) / splits;
  const int64_t b = static_cast<int64_t>(chunk) * len, e = b + len;
  return {static_cast<int32_t>(begin + (b < n ? b : n)),
          static_cast<int32_t>(begin + (e < n ? e : n))};
}

// One lane's part of a warp's state: its elements of the query head and of the accumulator, and
// the warp-wide maximum and normalizer (equal in every lane).
template <int P>
struct AttnLane {
  float q[P];
  float o[P];
  float m, l;
};

template <int P>
PI_HD void AttnLaneInit(AttnLane<P>& s, const float* qh, int head_dim, int lane) {
  PI_UNROLL
  for (int i = 0; i < P; ++i) {
    const int d = lane + 32 * i;
    s.q[i] = d < head_dim ? qh[d] : 0.0f;
    s.o[i] = 0.0f;
  }
  s.m = -INFINITY;
  s.l = 0.0f;
}

// Element i of a K or V row.
PI_HD float AttnElem(const uint8_t* row, int64_t i, bool f16) {
  return f16 ? HalfBitsToFloat(LoadAs<uint16_t>(row + 2 * i)) : LoadAs<float>(row + 4 * i);
}

// What one lane loads in one step: its share of each entry's q.k (to be summed over the warp) and
// its elements of each entry's V row. An entry is invalid past the chunk's end or for a negative
// slot; its dot part and V elements are then 0 and it must get a score of -inf.
template <int P>
struct AttnStepData {
  float dot[kAttnUnroll];
  float v[kAttnUnroll][P];
  bool valid[kAttnUnroll];
};

// First half of a step (entries j + u * kAttnWarps, u < kAttnUnroll, of a chunk ending at `end`;
// j itself is below `end`): every load, then this lane's parts of the dot products. `head_off`: the
// KV head's first element in the K/V rows. The loads are unconditional so that the compiler can
// issue them together: an invalid entry reads the row of slot 0 (present in every KV buffer) and a
// lane past head_dim reads the head's last element, and both are replaced by 0 afterwards.
template <int P>
PI_HD void AttnLoadStep(const KvGeometry& g, const uint8_t* kv, int layer, const int64_t* slots,
                        int32_t j, int32_t end, int64_t head_off, int head_dim, int lane,
                        const AttnLane<P>& s, AttnStepData<P>& st) {
  int64_t slot[kAttnUnroll];
  PI_UNROLL
  for (int u = 0; u < kAttnUnroll; ++u) {
    const int32_t ju = j + u * kAttnWarps;
    const int64_t sl = slots[ju < end ? ju : j];
    st.valid[u] = ju < end && sl >= 0;  // the same for the whole warp
    slot[u] = st.valid[u] ? sl : 0;
  }
  float k[kAttnUnroll][P];
  PI_UNROLL
  for (int u = 0; u < kAttnUnroll; ++u) {
    const uint8_t* krow = kv + KeyRowOffset(g, layer, slot[u]);
    const uint8_t* vrow = krow + static_cast<int64_t>(g.block_tokens) * g.row_bytes;
    PI_UNROLL
    for (int i = 0; i < P; ++i) {
      const int d = lane + 32 * i;
      const int64_t e = head_off + (d < head_dim ? d : head_dim - 1);
      k[u][i] = AttnElem(krow, e, g.f16);
      st.v[u][i] = AttnElem(vrow, e, g.f16);
    }
  }
  PI_UNROLL
  for (int u = 0; u < kAttnUnroll; ++u) {
    float dot = 0.0f;
    PI_UNROLL
    for (int i = 0; i < P; ++i) {
      const bool use = st.valid[u] && lane + 32 * i < head_dim;
      dot += use ? s.q[i] * k[u][i] : 0.0f;
      st.v[u][i] = use ? st.v[u][i] : 0.0f;
    }
    st.dot[u] = dot;
  }
}

// Second half of a step: folds the entries' scores (the warp-summed, scaled dot products; -inf for
// invalid entries) and V elements into the lane's state.
template <int P>
PI_HD void AttnUpdate(AttnLane<P>& s, const float score[kAttnUnroll], const AttnStepData<P>& st) {
  float m_new = s.m;
  PI_UNROLL
  for (int u = 0; u < kAttnUnroll; ++u) m_new = fmaxf(m_new, score[u]);
  if (m_new == -INFINITY) return;        // only -inf scores so far: nothing to add
  const float corr = expf(s.m - m_new);  // 0 while the state is empty (m = -inf)
  float p[kAttnUnroll];
  float l = s.l * corr;
  PI_UNROLL
  for (int u = 0; u < kAttnUnroll; ++u) {
    p[u] = expf(score[u] - m_new);  // 0 for an invalid entry
    l += p[u];
  }
  PI_UNROLL
  for (int i = 0; i < P; ++i) {
    float acc = s.o[i] * corr;
    PI_UNROLL
    for (int u = 0; u < kAttnUnroll; ++u) acc += p[u] * st.v[u][i];
    s.o[i] = acc;
  }
  s.l = l;
  s.m = m_new;
}

// n softmax states of one output element merged into one: m[i], l[i] and o[i * o_stride] rescaled
// to the common maximum and summed. A state with m = -inf saw no key and adds nothing.
struct AttnMerged {
  float m, l, o;
};
PI_HD AttnMerged AttnMerge(int n, const float* m, const float* l, const float* o,
                           int64_t o_stride) {
  float mx = -INFINITY;
  for (int i = 0; i < n; ++i) mx = fmaxf(mx, m[i]);
  float num = 0.0f, den = 0.0f;
  for (int i = 0; i < n; ++i) {
    if (m[i] == -INFINITY) continue;
    const float f = expf(m[i] - mx);
    num += o[i * o_stride] * f;
    den += l[i] * f;
  }
  return {mx, den, num};
}

// The normalized output of a merged state (0 when no key was seen).
PI_HD float AttnFinal(const AttnMerged& r) { return r.l > 0.0f ? r.o / r.l : 0.0f; }

// The split path's scratch (AttentionScratchFloats floats, cuda_launch.h): for partial
// p = pair * splits + chunk, its maximum at m[p], its normalizer at l[p] and its head_dim sums at
// o[p * head_dim ...].
struct AttnParts {
  float* m;
  float* l;
  float* o;
};
PI_HD AttnParts AttnPartsOf(float* scratch, int64_t n_parts) {
  return {scratch, scratch + n_parts, scratch + 2 * n_parts};
}

// Element d of the output of pair `pair`: its `splits` partials merged and normalized.
PI_HD float AttnCombineAt(const AttnParts& parts, int splits, int head_dim, int64_t pair, int d) {
  const int64_t p0 = pair * splits;
  return AttnFinal(
      AttnMerge(splits, parts.m + p0, parts.l + p0, parts.o + p0 * head_dim + d, head_dim));
}

}  // namespace pipeinfer::cuda::internal
