#include "gguf/tensor_type.h"

#include <array>
#include <string>

namespace pipeinfer::gguf {
namespace {

constexpr std::array kTypes = {
    TensorTypeInfo{TensorType::kF32, "f32", 1, 4, false},
    TensorTypeInfo{TensorType::kF16, "f16", 1, 2, false},
    TensorTypeInfo{TensorType::kQ4_0, "q4_0", 32, 18, true},
    TensorTypeInfo{TensorType::kQ4_1, "q4_1", 32, 20, true},
    TensorTypeInfo{TensorType::kQ5_0, "q5_0", 32, 22, true},
    TensorTypeInfo{TensorType::kQ5_1, "q5_1", 32, 24, true},
    TensorTypeInfo{TensorType::kQ8_0, "q8_0", 32, 34, true},
    TensorTypeInfo{TensorType::kQ8_1, "q8_1", 32, 36, true},
    TensorTypeInfo{TensorType::kQ2_K, "q2_K", 256, 84, true},
    TensorTypeInfo{TensorType::kQ3_K, "q3_K", 256, 110, true},
    TensorTypeInfo{TensorType::kQ4_K, "q4_K", 256, 144, true},
    TensorTypeInfo{TensorType::kQ5_K, "q5_K", 256, 176, true},
    TensorTypeInfo{TensorType::kQ6_K, "q6_K", 256, 210, true},
    TensorTypeInfo{TensorType::kQ8_K, "q8_K", 256, 292, true},
    TensorTypeInfo{TensorType::kI8, "i8", 1, 1, false},
    TensorTypeInfo{TensorType::kI16, "i16", 1, 2, false},
    TensorTypeInfo{TensorType::kI32, "i32", 1, 4, false},
    TensorTypeInfo{TensorType::kI64, "i64", 1, 8, false},
    TensorTypeInfo{TensorType::kF64, "f64", 1, 8, false},
    TensorTypeInfo{TensorType::kBF16, "bf16", 1, 2, false},
};

}  // namespace

std::optional<TensorTypeInfo> LookupTensorType(uint32_t id) {
  for (const auto& info : kTypes) {
    if (static_cast<uint32_t>(info.type) == id) return info;
  }
  return std::nullopt;
}

const TensorTypeInfo& TypeInfo(TensorType type) {
  for (const auto& info : kTypes) {
    if (info.type == type) return info;
  }
  return kTypes[0];  // unreachable for valid enum values
}

std::string TensorTypeName(uint32_t id) {
  auto info = LookupTensorType(id);
  if (info) return std::string(info->name);
  return "type" + std::to_string(id);
}

std::optional<uint64_t> RowBytes(TensorType type, uint64_t n_elements) {
  const auto& info = TypeInfo(type);
  if (n_elements % info.block_size != 0) return std::nullopt;
  return n_elements / info.block_size * info.type_size;
}

std::vector<int> HalfFieldOffsets(TensorType type) {
  switch (type) {
    case TensorType::kQ4_0:
    case TensorType::kQ5_0:
    case TensorType::kQ8_0:
      return {0};  // d
    case TensorType::kQ4_1:
    case TensorType::kQ5_1:
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
      return {0, 2};  // d, m (dmin for the K types)
    case TensorType::kQ2_K:
      return {80, 82};  // after 16 scale bytes and 64 quant bytes
    case TensorType::kQ3_K:
      return {108};  // after 32 hmask, 64 quant and 12 scale bytes
    case TensorType::kQ6_K:
      return {208};  // after 128 ql, 64 qh and 16 scale bytes
    default:
      return {};
  }
}

}  // namespace pipeinfer::gguf
