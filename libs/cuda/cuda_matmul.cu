// Device side of the matrix products: the mat-vec kernel for a few tokens and the conversions to
// F16 that feed cuBLAS for many tokens (the weight decoders are in cuda_decode.cuh).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/cuda_decode.cuh"
#include "cuda/cuda_hd.cuh"
#include "cuda/cuda_launch.h"

namespace pipeinfer::cuda::internal {
namespace {

constexpr int kMatVecWarps = 4;  // rows (one per warp) per block of the mat-vec kernel
constexpr int kElementwiseThreads = 256;

// One warp per output row (MatVecLane: each weight decoded once for all n_tokens activation
// rows); the lanes' per-token partial sums are then added across the warp.
template <TensorType T>
__global__ void __launch_bounds__(kMatVecWarps * 32)
    MatVecKernel(const uint8_t* __restrict__ w, int64_t rows, int64_t cols, size_t row_bytes,
                 bool w_aligned, const float* __restrict__ x, int64_t x_stride, bool x_aligned,
                 int n_tokens, float* __restrict__ y, int64_t y_stride) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMatVecWarps + (threadIdx.x >> 5);
  if (row >= rows) return;  // the whole warp leaves together
  float acc[kMaxTokens];
  PI_UNROLL
  for (int t = 0; t < kMaxTokens; ++t) acc[t] = 0.0f;
  MatVecLane<T>(w + row * row_bytes, cols, w_aligned, x, x_stride, x_aligned, n_tokens, lane, acc);
  PI_UNROLL
  for (int t = 0; t < kMaxTokens; ++t) {
    float v = acc[t];
    PI_UNROLL
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0 && t < n_tokens) y[t * y_stride + row] = v;
  }
}

// One thread per group of 8 weights, grid-stride; rows are written packed (ld = cols).
template <TensorType T>
__global__ void DequantToHalfKernel(const uint8_t* __restrict__ w, int64_t rows, int64_t cols,
                                    size_t row_bytes, bool w_aligned, uint16_t* __restrict__ out) {
  const int64_t n_groups = (cols + kGroup - 1) / kGroup;
  const int64_t total = rows * n_groups;
  const bool out_vec = cols % kGroup == 0;  // each group then starts 16-byte aligned
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / n_groups, g = i % n_groups;
    float wv[kGroup];
    const int n_valid = DecodeGroup<T>(w + r * row_bytes, g, cols, w_aligned, wv);
    StoreGroupHalf(out + r * cols + kGroup * g, wv, n_valid, out_vec);
  }
}

__global__ void FloatToHalfRowsKernel(const float* __restrict__ x, int64_t x_stride, int64_t rows,
                                      int64_t cols, uint16_t* __restrict__ out) {
  const int64_t total = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    out[i] = __half_as_ushort(__float2half_rn(x[r * x_stride + c]));
  }
}

// Blocks for a grid-stride loop over `total` items (capped; the loop covers the rest).
unsigned GridFor(int64_t total) {
  const int64_t blocks = (total + kElementwiseThreads - 1) / kElementwiseThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > (1 << 20) ? (1 << 20) : blocks));
}

bool Aligned16(const void* p, size_t row_bytes) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && row_bytes % 16 == 0;
}

template <TensorType T>
cudaError_t MatVecAs(const uint8_t* w, int64_t rows, int64_t cols, size_t row_bytes, const float* x,
                     int64_t x_stride, int n_tokens, float* y, int64_t y_stride,
                     cudaStream_t stream) {
  const bool x_aligned =
      reinterpret_cast<uintptr_t>(x) % 16 == 0 && (n_tokens == 1 || x_stride % 4 == 0);
  const auto blocks = static_cast<unsigned>((rows + kMatVecWarps - 1) / kMatVecWarps);
  MatVecKernel<T><<<blocks, kMatVecWarps * 32, 0, stream>>>(w, rows, cols, row_bytes,
                                                            Aligned16(w, row_bytes), x, x_stride,
                                                            x_aligned, n_tokens, y, y_stride);
  return cudaGetLastError();
}

template <TensorType T>
cudaError_t DequantAs(const uint8_t* w, int64_t rows, int64_t cols, size_t row_bytes, uint16_t* out,
                      cudaStream_t stream) {
  const int64_t groups = rows * ((cols + kGroup - 1) / kGroup);
  DequantToHalfKernel<T><<<GridFor(groups), kElementwiseThreads, 0, stream>>>(
      w, rows, cols, row_bytes, Aligned16(w, row_bytes), out);
  return cudaGetLastError();
}

}  // namespace

namespace {

template <TensorType T>
void DecodeRowAs(const uint8_t* row, int64_t cols, bool aligned, float* out, uint16_t* out_half) {
  const int64_t n_groups = (cols + kGroup - 1) / kGroup;
  for (int64_t g = 0; g < n_groups; ++g) {
    float w[kGroup];
    const int n = DecodeGroup<T>(row, g, cols, aligned, w);
    for (int k = 0; k < n; ++k) out[kGroup * g + k] = w[k];
    StoreGroupHalf(out_half + kGroup * g, w, n, aligned && cols % kGroup == 0);
  }
}

}  // namespace

bool DecodeRowOnHost(TensorType type, const uint8_t* row, int64_t cols, bool aligned, float* out,
                     uint16_t* out_half) {
  switch (type) {
    case TensorType::kF32:
      DecodeRowAs<TensorType::kF32>(row, cols, aligned, out, out_half);
      return true;
    case TensorType::kF16:
      DecodeRowAs<TensorType::kF16>(row, cols, aligned, out, out_half);
      return true;
    case TensorType::kBF16:
      DecodeRowAs<TensorType::kBF16>(row, cols, aligned, out, out_half);
      return true;
    case TensorType::kQ8_0:
      DecodeRowAs<TensorType::kQ8_0>(row, cols, aligned, out, out_half);
      return true;
    case TensorType::kQ4_0:
      DecodeRowAs<TensorType::kQ4_0>(row, cols, aligned, out, out_half);
      return true;
    case TensorType::kQ4_K:
      DecodeRowAs<TensorType::kQ4_K>(row, cols, aligned, out, out_half);
      return true;
    case TensorType::kQ6_K:
      DecodeRowAs<TensorType::kQ6_K>(row, cols, aligned, out, out_half);
      return true;
    default:
      return false;
  }
}

namespace {

// Calls f(std::integral_constant<TensorType, T>{}) for a device type T; false for other types.
template <typename F>
bool WithDeviceType(TensorType type, F&& f) {
  switch (type) {
    case TensorType::kF32:
      f(std::integral_constant<TensorType, TensorType::kF32>{});
      return true;
    case TensorType::kF16:
      f(std::integral_constant<TensorType, TensorType::kF16>{});
      return true;
    case TensorType::kBF16:
      f(std::integral_constant<TensorType, TensorType::kBF16>{});
      return true;
    case TensorType::kQ8_0:
      f(std::integral_constant<TensorType, TensorType::kQ8_0>{});
      return true;
    case TensorType::kQ4_0:
      f(std::integral_constant<TensorType, TensorType::kQ4_0>{});
      return true;
    case TensorType::kQ4_K:
      f(std::integral_constant<TensorType, TensorType::kQ4_K>{});
      return true;
    case TensorType::kQ6_K:
      f(std::integral_constant<TensorType, TensorType::kQ6_K>{});
      return true;
    default:
      return false;
  }
}

}  // namespace

bool DecodeRowForMatVecOnHost(TensorType type, const uint8_t* row, int64_t cols, float* out) {
  return WithDeviceType(type, [&](auto tag) {
    constexpr TensorType T = decltype(tag)::value;
    using Unit = MatVecUnit<T>;
    constexpr int kUnitWeights = Unit::kRuns * Unit::kRunLen;
    const int64_t n_units = cols / kUnitWeights;
    for (int64_t u = 0; u < n_units; ++u) {
      float w[kUnitWeights];
      Unit::Decode(Unit::Load(row, u), w);
      for (int r = 0; r < Unit::kRuns; ++r) {
        for (int k = 0; k < Unit::kRunLen; ++k) {
          out[Unit::RunCol(u, r) + k] = w[r * Unit::kRunLen + k];
        }
      }
    }
    const int64_t n_groups = (cols + kGroup - 1) / kGroup;
    for (int64_t g = n_units * (kUnitWeights / kGroup); g < n_groups; ++g) {
      float w[kGroup];
      const int n = DecodeGroup<T>(row, g, cols, false, w);
      for (int k = 0; k < n; ++k) out[kGroup * g + k] = w[k];
    }
  });
}

bool MatVecOnHost(TensorType type, const uint8_t* w, int64_t rows, int64_t cols, size_t row_bytes,
                  bool aligned, const float* x, int64_t x_stride, int n_tokens, float* y,
                  int64_t y_stride) {
  if (n_tokens < 1 || n_tokens > kMaxTokens) return false;
  return WithDeviceType(type, [&](auto tag) {
    constexpr TensorType T = decltype(tag)::value;
    for (int64_t r = 0; r < rows; ++r) {
      float sum[kMaxTokens] = {};
      for (int lane = 0; lane < 32; ++lane) {
        float acc[kMaxTokens] = {};
        MatVecLane<T>(w + r * row_bytes, cols, aligned, x, x_stride, aligned, n_tokens, lane, acc);
        for (int t = 0; t < kMaxTokens; ++t) sum[t] += acc[t];
      }
      for (int t = 0; t < n_tokens; ++t) y[t * y_stride + r] = sum[t];
    }
  });
}

bool DeviceDecodes(TensorType type) { return DeviceBlockSize(type) > 0; }

int DeviceBlockSize(TensorType type) {
  switch (type) {
    case TensorType::kF32:
    case TensorType::kF16:
    case TensorType::kBF16:
      return 1;
    case TensorType::kQ8_0:
    case TensorType::kQ4_0:
      return 32;
    case TensorType::kQ4_K:
    case TensorType::kQ6_K:
      return 256;
    default:
      return 0;
  }
}

int DeviceBlockBytes(TensorType type) {
  switch (type) {
    case TensorType::kF32:
      return 4;
    case TensorType::kF16:
    case TensorType::kBF16:
      return 2;
    case TensorType::kQ8_0:
      return 34;
    case TensorType::kQ4_0:
      return 18;
    case TensorType::kQ4_K:
      return 144;
    case TensorType::kQ6_K:
      return 210;
    default:
      return 0;
  }
}

cudaError_t LaunchMatVec(TensorType type, const uint8_t* w, int64_t rows, int64_t cols,
                         size_t row_bytes, const float* x, int64_t x_stride, int n_tokens, float* y,
                         int64_t y_stride, cudaStream_t stream) {
  if (n_tokens < 1 || n_tokens > kMaxTokens) return cudaErrorInvalidValue;
  switch (type) {
    case TensorType::kF32:
      return MatVecAs<TensorType::kF32>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                        y_stride, stream);
    case TensorType::kF16:
      return MatVecAs<TensorType::kF16>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                        y_stride, stream);
    case TensorType::kBF16:
      return MatVecAs<TensorType::kBF16>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                         y_stride, stream);
    case TensorType::kQ8_0:
      return MatVecAs<TensorType::kQ8_0>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                         y_stride, stream);
    case TensorType::kQ4_0:
      return MatVecAs<TensorType::kQ4_0>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                         y_stride, stream);
    case TensorType::kQ4_K:
      return MatVecAs<TensorType::kQ4_K>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                         y_stride, stream);
    case TensorType::kQ6_K:
      return MatVecAs<TensorType::kQ6_K>(w, rows, cols, row_bytes, x, x_stride, n_tokens, y,
                                         y_stride, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t LaunchDequantToHalf(TensorType type, const uint8_t* w, int64_t rows, int64_t cols,
                                size_t row_bytes, uint16_t* out, cudaStream_t stream) {
  switch (type) {
    case TensorType::kF32:
      return DequantAs<TensorType::kF32>(w, rows, cols, row_bytes, out, stream);
    case TensorType::kF16:
      return DequantAs<TensorType::kF16>(w, rows, cols, row_bytes, out, stream);
    case TensorType::kBF16:
      return DequantAs<TensorType::kBF16>(w, rows, cols, row_bytes, out, stream);
    case TensorType::kQ8_0:
      return DequantAs<TensorType::kQ8_0>(w, rows, cols, row_bytes, out, stream);
    case TensorType::kQ4_0:
      return DequantAs<TensorType::kQ4_0>(w, rows, cols, row_bytes, out, stream);
    case TensorType::kQ4_K:
      return DequantAs<TensorType::kQ4_K>(w, rows, cols, row_bytes, out, stream);
    case TensorType::kQ6_K:
      return DequantAs<TensorType::kQ6_K>(w, rows, cols, row_bytes, out, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t LaunchFloatToHalfRows(const float* x, int64_t x_stride, int64_t rows, int64_t cols,
                                  uint16_t* out, cudaStream_t stream) {
  FloatToHalfRowsKernel<<<GridFor(rows * cols), kElementwiseThreads, 0, stream>>>(x, x_stride, rows,
                                                                                  cols, out);
  return cudaGetLastError();
}

}  // namespace pipeinfer::cuda::internal
