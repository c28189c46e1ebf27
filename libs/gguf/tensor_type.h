// Tensor element types of GGUF files (ggml's type ids), with their block geometry.
//
// Quantized types store elements in fixed-size blocks: `block_size` elements occupy `type_size`
// bytes. Plain types have a block size of 1. Decoding the data is the kernels' job; this header
// only knows the layout sizes needed to validate files and locate tensors.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pipeinfer::gguf {

// The numeric ids are ggml's and appear verbatim in GGUF tensor infos.
enum class TensorType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

struct TensorTypeInfo {
  TensorType type;
  const char* name;     // ggml's name, e.g. "q4_K"
  uint32_t block_size;  // elements per block
  uint32_t type_size;   // bytes per block
  bool quantized;
};

// Layout of a known type id, or nullopt for ids this project does not know (including ggml's
// IQ* types, which are rejected at load time with a clear message).
std::optional<TensorTypeInfo> LookupTensorType(uint32_t id);

// Same, for a known enum value (never fails).
const TensorTypeInfo& TypeInfo(TensorType type);

// Name of a type id for messages: the ggml name, or "type<id>" when unknown.
std::string TensorTypeName(uint32_t id);

// Bytes occupied by `n_elements` elements stored in one row of `type`; nullopt when
// `n_elements` is not a multiple of the block size.
std::optional<uint64_t> RowBytes(TensorType type, uint64_t n_elements);

// Byte offsets of the F16 fields (scales and mins) inside one block of a quantized type; empty for
// F32/F16/BF16. Data generators use it to keep those fields finite.
std::vector<int> HalfFieldOffsets(TensorType type);

}  // namespace pipeinfer::gguf
