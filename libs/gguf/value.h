// GGUF metadata values: the 13 value types of the format, scalars and (nested) arrays.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace pipeinfer::gguf {

// Value type ids as written in the file.
enum class ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "uint32", "string", ... or nullopt for an id outside the format.
std::optional<std::string_view> ValueTypeName(uint32_t id);
// Size in bytes of a fixed-size scalar type; 0 for string and array.
uint32_t ScalarSize(ValueType type);

class Value;

// An array value. Numeric and bool elements stay packed little-endian in the file mapping (zero
// copy; `raw` points into it); strings and nested arrays are decoded.
struct ArrayValue {
  ValueType elem_type = ValueType::kUint8;
  uint64_t size = 0;
  const uint8_t* raw = nullptr;
  std::vector<std::string> strings;
  std::vector<Value> arrays;

  // Element i converted to the requested representation (nullopt when the element type does not
  // convert: e.g. a negative integer as unsigned, a string as a number).
  std::optional<int64_t> IntAt(uint64_t i) const;
  std::optional<uint64_t> UintAt(uint64_t i) const;
  std::optional<double> FloatAt(uint64_t i) const;
};

class Value {
 public:
  Value() = default;
  static Value Uint(ValueType t, uint64_t v) { return Value(t, v); }
  static Value Int(ValueType t, int64_t v) { return Value(t, v); }
  static Value Float(ValueType t, double v) { return Value(t, v); }
  static Value Bool(bool v) { return Value(ValueType::kBool, v); }
  static Value String(std::string v) { return Value(ValueType::kString, std::move(v)); }
  static Value Array(ArrayValue v) { return Value(ValueType::kArray, std::move(v)); }

  ValueType type() const { return type_; }

  // Integer views accept every integer type whose value fits; float views accept f32/f64.
  std::optional<uint64_t> AsUint() const;
  std::optional<int64_t> AsInt() const;
  std::optional<double> AsFloat() const;
  std::optional<bool> AsBool() const;
  const std::string* AsString() const { return std::get_if<std::string>(&v_); }
  const ArrayValue* AsArray() const { return std::get_if<ArrayValue>(&v_); }

  // Human-readable rendering; arrays longer than `max_items` are elided ("... (N more)").
  std::string ToString(size_t max_items = 8) const;

 private:
  template <typename T>
  Value(ValueType t, T v) : type_(t), v_(std::move(v)) {}

  ValueType type_ = ValueType::kUint8;
  std::variant<std::monostate, uint64_t, int64_t, double, bool, std::string, ArrayValue> v_;
};

}  // namespace pipeinfer::gguf
