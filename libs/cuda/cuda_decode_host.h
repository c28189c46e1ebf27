// Internal: host builds of the kernels' weight decoding and mat-vec code (cuda_matmul.cu compiles
// them for the host as well), for tests that need no device. Neither CUDA nor absl headers, so
// that both the .cu files (through cuda_launch.h) and the tests (through cuda_host.h) include it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gguf/tensor_type.h"

namespace pipeinfer::cuda::internal {

// Decodes one row of `cols` weights of a device type with the very functions the kernels use:
// out[cols] gets the floats the mat-vec kernel multiplies with, out_half[cols] the F16 bits the
// dequantize-for-cuBLAS kernel writes. `aligned` selects the kernels' 16-byte load/store path (the
// row must then start at a 16-byte boundary and its bytes be a multiple of 16, as on the device).
// False for a type the device does not decode.
bool DecodeRowOnHost(gguf::TensorType type, const uint8_t* row, int64_t cols, bool aligned,
                     float* out, uint16_t* out_half);

// The mat-vec kernel's fast path run on the host (cuda_decode.cuh's MatVecLane):
// DecodeRowForMatVecOnHost decodes a row with its unit decoders (partial last groups with the
// group decoders), MatVecOnHost computes y[t * y_stride + r] as the kernel does (MatVecLane for
// each row and each of the 32 lanes, lanes summed in order; `aligned` takes the fast path as for
// 16-byte aligned rows). False for a type the device does not decode (MatVecOnHost also for
// n_tokens outside 1..8).
bool DecodeRowForMatVecOnHost(gguf::TensorType type, const uint8_t* row, int64_t cols, float* out);
bool MatVecOnHost(gguf::TensorType type, const uint8_t* w, int64_t rows, int64_t cols,
                  size_t row_bytes, bool aligned, const float* x, int64_t x_stride, int n_tokens,
                  float* y, int64_t y_stride);

}  // namespace pipeinfer::cuda::internal
