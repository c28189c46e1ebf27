// Internal: the byte geometry of the paged KV storage (KvLayout of cuda_ops.h in bytes), shared
// by the host code, the kernels and the tests. No dependencies.
#pragma once

#include <cstdint>

namespace pipeinfer::cuda::internal {

// The K row of physical slot p in layer l starts at byte
//   (p / block_tokens) * block_bytes + l * layer_bytes + (p % block_tokens) * row_bytes
// and its V row block_tokens * row_bytes later.
struct KvGeometry {
  int64_t block_bytes = 0;
  int64_t layer_bytes = 0;  // 2 * block_tokens * row_bytes
  int64_t row_bytes = 0;
  int32_t block_tokens = 0;
  int32_t row_elems = 0;
  int32_t n_layers = 0;
  bool f16 = true;
};

}  // namespace pipeinfer::cuda::internal
