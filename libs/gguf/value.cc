#include "gguf/value.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace pipeinfer::gguf {
namespace {

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// The element at `p` of scalar type `t`, as one of the three numeric representations.
std::variant<uint64_t, int64_t, double> LoadScalar(ValueType t, const uint8_t* p) {
  switch (t) {
    case ValueType::kUint8:
      return uint64_t{Load<uint8_t>(p)};
    case ValueType::kBool:
      return uint64_t{Load<uint8_t>(p) != 0 ? 1u : 0u};
    case ValueType::kInt8:
      return int64_t{Load<int8_t>(p)};
    case ValueType::kUint16:
      return uint64_t{Load<uint16_t>(p)};
    case ValueType::kInt16:
      return int64_t{Load<int16_t>(p)};
    case ValueType::kUint32:
      return uint64_t{Load<uint32_t>(p)};
    case ValueType::kInt32:
      return int64_t{Load<int32_t>(p)};
    case ValueType::kUint64:
      return Load<uint64_t>(p);
    case ValueType::kInt64:
      return Load<int64_t>(p);
    case ValueType::kFloat32:
      return double{Load<float>(p)};
    case ValueType::kFloat64:
      return Load<double>(p);
    default:
      return uint64_t{0};
  }
}

bool IsInteger(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kUint16:
    case ValueType::kInt16:
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kUint64:
    case ValueType::kInt64:
      return true;
    default:
      return false;
  }
}

std::optional<uint64_t> ToUint(const std::variant<uint64_t, int64_t, double>& v) {
  if (auto* u = std::get_if<uint64_t>(&v)) return *u;
  if (auto* i = std::get_if<int64_t>(&v)) {
    if (*i >= 0) return static_cast<uint64_t>(*i);
  }
  return std::nullopt;
}

std::optional<int64_t> ToInt(const std::variant<uint64_t, int64_t, double>& v) {
  if (auto* i = std::get_if<int64_t>(&v)) return *i;
  if (auto* u = std::get_if<uint64_t>(&v)) {
    if (*u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return static_cast<int64_t>(*u);
    }
  }
  return std::nullopt;
}

std::string Quote(const std::string& s, size_t max_len = 200) {
  std::string shown = s.size() > max_len ? s.substr(0, max_len) : s;
  std::string out = absl::StrCat("\"", absl::CHexEscape(shown), "\"");
  if (s.size() > max_len) absl::StrAppend(&out, "... (", s.size(), " bytes)");
  return out;
}

}  // namespace

std::optional<std::string_view> ValueTypeName(uint32_t id) {
  static constexpr std::string_view kNames[] = {"uint8",  "int8",    "uint16", "int16",  "uint32",
                                                "int32",  "float32", "bool",   "string", "array",
                                                "uint64", "int64",   "float64"};
  if (id < std::size(kNames)) return kNames[id];
  return std::nullopt;
}

uint32_t ScalarSize(ValueType type) {
  switch (type) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kBool:
      return 1;
    case ValueType::kUint16:
    case ValueType::kInt16:
      return 2;
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kFloat32:
      return 4;
    case ValueType::kUint64:
    case ValueType::kInt64:
    case ValueType::kFloat64:
      return 8;
    default:
      return 0;
  }
}

std::optional<int64_t> ArrayValue::IntAt(uint64_t i) const {
  if (i >= size || raw == nullptr || !IsInteger(elem_type)) return std::nullopt;
  return ToInt(LoadScalar(elem_type, raw + i * ScalarSize(elem_type)));
}

std::optional<uint64_t> ArrayValue::UintAt(uint64_t i) const {
  if (i >= size || raw == nullptr || !IsInteger(elem_type)) return std::nullopt;
  return ToUint(LoadScalar(elem_type, raw + i * ScalarSize(elem_type)));
}

std::optional<double> ArrayValue::FloatAt(uint64_t i) const {
  if (i >= size || raw == nullptr) return std::nullopt;
  if (elem_type != ValueType::kFloat32 && elem_type != ValueType::kFloat64) return std::nullopt;
  return std::get<double>(LoadScalar(elem_type, raw + i * ScalarSize(elem_type)));
}

std::optional<uint64_t> Value::AsUint() const {
  if (!IsInteger(type_)) return std::nullopt;
  if (auto* u = std::get_if<uint64_t>(&v_)) return *u;
  if (auto* i = std::get_if<int64_t>(&v_)) return ToUint(*i);
  return std::nullopt;
}

std::optional<int64_t> Value::AsInt() const {
  if (!IsInteger(type_)) return std::nullopt;
  if (auto* i = std::get_if<int64_t>(&v_)) return *i;
  if (auto* u = std::get_if<uint64_t>(&v_)) return ToInt(*u);
  return std::nullopt;
}

std::optional<double> Value::AsFloat() const {
  if (auto* d = std::get_if<double>(&v_)) return *d;
  return std::nullopt;
}

std::optional<bool> Value::AsBool() const {
  if (auto* b = std::get_if<bool>(&v_)) return *b;
  return std::nullopt;
}

std::string Value::ToString(size_t max_items) const {
  switch (type_) {
    case ValueType::kBool:
      return std::get<bool>(v_) ? "true" : "false";
    case ValueType::kString:
      return Quote(std::get<std::string>(v_));
    case ValueType::kFloat32:
    case ValueType::kFloat64:
      return absl::StrCat(std::get<double>(v_));
    case ValueType::kArray: {
      const auto& a = std::get<ArrayValue>(v_);
      std::string out = absl::StrCat(
          "[", std::string(*ValueTypeName(static_cast<uint32_t>(a.elem_type))), " x ", a.size, "]");
      const uint64_t shown = std::min<uint64_t>(a.size, max_items);
      for (uint64_t i = 0; i < shown; ++i) {
        absl::StrAppend(&out, i == 0 ? " " : ", ");
        if (a.elem_type == ValueType::kString) {
          absl::StrAppend(&out, Quote(a.strings[i], 40));
        } else if (a.elem_type == ValueType::kArray) {
          absl::StrAppend(&out, a.arrays[i].ToString(max_items));
        } else if (a.elem_type == ValueType::kFloat32 || a.elem_type == ValueType::kFloat64) {
          absl::StrAppend(&out, *a.FloatAt(i));
        } else if (a.elem_type == ValueType::kBool) {
          absl::StrAppend(&out, *a.UintAt(i) ? "true" : "false");
        } else if (auto u = a.UintAt(i)) {
          absl::StrAppend(&out, *u);
        } else {
          absl::StrAppend(&out, *a.IntAt(i));
        }
      }
      if (a.size > shown) absl::StrAppend(&out, ", ... (", a.size - shown, " more)");
      return out;
    }
    default:
      if (auto* u = std::get_if<uint64_t>(&v_)) return absl::StrCat(*u);
      if (auto* i = std::get_if<int64_t>(&v_)) return absl::StrCat(*i);
      return "?";
  }
}

}  // namespace pipeinfer::gguf
