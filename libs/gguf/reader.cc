#include "gguf/reader.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace pipeinfer::gguf {

static_assert(std::endian::native == std::endian::little,
              "GGUF reader assumes a little-endian host");

namespace {

constexpr int kMaxArrayDepth = 8;
constexpr uint64_t kMaxNameLength = 1 << 16;

// Bounds-checked sequential reader over the file bytes. Every read names what it was reading so
// that errors point at the defect.
class Cursor {
 public:
  Cursor(std::span<const uint8_t> bytes, const std::string& file) : b_(bytes), file_(file) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return b_.size() - pos_; }

  absl::Status Need(uint64_t n, const std::string& what) const {
    if (n > remaining()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file_, ": truncated file: ", what, " needs ", n, " bytes at offset ", pos_,
                       " but only ", remaining(), " remain (file size ", b_.size(), ")"));
    }
    return absl::OkStatus();
  }

  template <typename T>
  absl::StatusOr<T> Read(const std::string& what) {
    PI_RETURN_IF_ERROR(Need(sizeof(T), what));
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  absl::StatusOr<const uint8_t*> Take(uint64_t n, const std::string& what) {
    PI_RETURN_IF_ERROR(Need(n, what));
    const uint8_t* p = b_.data() + pos_;
    pos_ += n;
    return p;
  }

  absl::StatusOr<std::string> ReadString(const std::string& what) {
    const uint64_t at = pos_;
    PI_ASSIGN_OR_RETURN(uint64_t len, Read<uint64_t>(absl::StrCat(what, " length")));
    if (len > remaining()) {
      return absl::InvalidArgumentError(absl::StrCat(file_, ": ", what, " at offset ", at,
                                                     " claims length ", len, " which exceeds the ",
                                                     remaining(), " bytes left in the file"));
    }
    PI_ASSIGN_OR_RETURN(const uint8_t* p, Take(len, what));
    return std::string(reinterpret_cast<const char*>(p), len);
  }

  const std::string& file() const { return file_; }

 private:
  std::span<const uint8_t> b_;
  const std::string& file_;
  uint64_t pos_ = 0;
};

absl::Status Invalid(const std::string& file, const std::string& msg) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", msg));
}

absl::StatusOr<ValueType> ReadValueType(Cursor& c, const std::string& what) {
  const uint64_t at = c.pos();
  PI_ASSIGN_OR_RETURN(uint32_t id, c.Read<uint32_t>(absl::StrCat(what, " type")));
  if (!ValueTypeName(id)) {
    return Invalid(c.file(),
                   absl::StrCat(what, " has unknown value type id ", id, " at offset ", at));
  }
  return static_cast<ValueType>(id);
}

absl::StatusOr<Value> ReadValue(Cursor& c, ValueType type, const std::string& what, int depth);

absl::StatusOr<Value> ReadArray(Cursor& c, const std::string& what, int depth) {
  if (depth >= kMaxArrayDepth) {
    return Invalid(c.file(), absl::StrCat(what, ": arrays nested deeper than ", kMaxArrayDepth));
  }
  PI_ASSIGN_OR_RETURN(ValueType elem, ReadValueType(c, absl::StrCat(what, " element")));
  const uint64_t at = c.pos();
  PI_ASSIGN_OR_RETURN(uint64_t n, c.Read<uint64_t>(absl::StrCat(what, " array length")));
  // Smallest possible encoding of one element: bounds the count before anything is allocated.
  uint64_t min_elem = ScalarSize(elem);
  if (elem == ValueType::kString) min_elem = 8;
  if (elem == ValueType::kArray) min_elem = 12;
  if (n > c.remaining() / min_elem) {
    return Invalid(c.file(),
                   absl::StrCat(what, ": array length ", n, " at offset ", at,
                                " does not fit in the ", c.remaining(), " bytes left in the file"));
  }
  ArrayValue arr;
  arr.elem_type = elem;
  arr.size = n;
  if (elem == ValueType::kString) {
    arr.strings.reserve(n);
    for (uint64_t i = 0; i < n; ++i) {
      PI_ASSIGN_OR_RETURN(std::string s, c.ReadString(absl::StrCat(what, "[", i, "]")));
      arr.strings.push_back(std::move(s));
    }
  } else if (elem == ValueType::kArray) {
    arr.arrays.reserve(n);
    for (uint64_t i = 0; i < n; ++i) {
      PI_ASSIGN_OR_RETURN(Value v, ReadArray(c, absl::StrCat(what, "[", i, "]"), depth + 1));
      arr.arrays.push_back(std::move(v));
    }
  } else {
    PI_ASSIGN_OR_RETURN(arr.raw, c.Take(n * min_elem, absl::StrCat(what, " array data")));
  }
  return Value::Array(std::move(arr));
}

absl::StatusOr<Value> ReadValue(Cursor& c, ValueType type, const std::string& what, int depth) {
  switch (type) {
    case ValueType::kUint8: {
      PI_ASSIGN_OR_RETURN(auto v, c.Read<uint8_t>(what));
      return Value::Uint(type, v);
    }
    case ValueType::kInt8: {
      PI_ASSIGN_OR_RETURN(auto v, c.Read<int8_t>(what));
      return Value::Int(type, v);
    }
    case ValueType::kUint16: {
      PI_ASSIGN_OR_RETURN(auto v, c.Read<uint16_t>(what));
      return Value::Uint(type, v);
    }
    case ValueType::kInt16: {
      PI_ASSIGN_OR_RETURN(auto v, c.Read<int16_t>(what));
      return Value::Int(type, v);
    }
    case ValueType::kUint32: {
      PI_ASSIGN_OR_RETURN(auto v, c.Read<uint32_t>(what));
      return Value::Uint(type, v);
    }
    case ValueType::kInt32: {
      PI_ASSIGN_OR_RETURN(auto v, c.Read<int32_t>(what));
      return Value::Int(type, v);
    }
    case ValueType::kUint64: {
      PI_ASSIGN_OR_RETURN(auto v, c.Read<uint64_t>(what));
      return Value::Uint(type, v);
    }
    case ValueType::kInt64: {
      PI_ASSIGN_OR_RETURN(auto v, c.Read<int64_t>(what));
      return Value::Int(type, v);
    }
    case ValueType::kFloat32: {
      PI_ASSIGN_OR_RETURN(auto v, c.Read<float>(what));
      return Value::Float(type, v);
    }
    case ValueType::kFloat64: {
      PI_ASSIGN_OR_RETURN(auto v, c.Read<double>(what));
      return Value::Float(type, v);
    }
    case ValueType::kBool: {
      PI_ASSIGN_OR_RETURN(auto v, c.Read<uint8_t>(what));
      return Value::Bool(v != 0);
    }
    case ValueType::kString: {
      PI_ASSIGN_OR_RETURN(auto s, c.ReadString(what));
      return Value::String(std::move(s));
    }
    case ValueType::kArray:
      return ReadArray(c, what, depth);
  }
  return Invalid(c.file(), absl::StrCat(what, ": unknown value type"));
}

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

uint64_t TensorInfo::rows() const {
  uint64_t r = 1;
  for (size_t i = 1; i < shape.size(); ++i) r *= shape[i];
  return r;
}

std::string TensorInfo::ShapeString() const {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  PI_ASSIGN_OR_RETURN(auto mapping, MappedFile::Open(path));
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->name_ = path;
  f->bytes_ = mapping->bytes();
  f->mapping_ = std::move(mapping);
  PI_RETURN_IF_ERROR(f->ParseAll());
  return f;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(std::span<const uint8_t> bytes,
                                                          std::string name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->name_ = std::move(name);
  f->bytes_ = bytes;
  PI_RETURN_IF_ERROR(f->ParseAll());
  return f;
}

absl::Status GgufFile::ParseAll() {
  Cursor c(bytes_, name_);
  if (bytes_.size() < 4) {
    return Invalid(name_, absl::StrCat("not a GGUF file: only ", bytes_.size(), " bytes"));
  }
  PI_ASSIGN_OR_RETURN(uint32_t magic, c.Read<uint32_t>("magic"));
  if (magic != kMagic) {
    std::string shown;
    for (int i = 0; i < 4; ++i) {
      const char ch = static_cast<char>(bytes_[i]);
      shown += (ch >= 32 && ch < 127) ? std::string(1, ch)
                                      : absl::StrCat("\\x", absl::Hex(bytes_[i], absl::kZeroPad2));
    }
    return Invalid(name_,
                   absl::StrCat("bad magic \"", shown, "\" (expected \"GGUF\"): not a GGUF file"));
  }
  PI_ASSIGN_OR_RETURN(version_, c.Read<uint32_t>("version"));
  if (version_ != 2 && version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(version_);
    if (swapped == 2 || swapped == 3) {
      return Invalid(name_, absl::StrCat("big-endian GGUF v", swapped, " is not supported"));
    }
    if (version_ == 1) {
      return Invalid(name_, "GGUF version 1 is not supported (re-convert the model to v2/v3)");
    }
    return Invalid(name_,
                   absl::StrCat("unsupported GGUF version ", version_, " (supported: 2, 3)"));
  }
  PI_ASSIGN_OR_RETURN(uint64_t n_tensors, c.Read<uint64_t>("tensor count"));
  PI_ASSIGN_OR_RETURN(uint64_t n_kv, c.Read<uint64_t>("metadata count"));
  // Smallest encodings: a key-value is 8+1+4+1 bytes, a tensor info 8+1+4+8+4+8 bytes.
  if (n_kv > c.remaining() / 14) {
    return Invalid(name_, absl::StrCat("metadata count ", n_kv, " cannot fit in the ",
                                       c.remaining(), " bytes after the header"));
  }
  if (n_tensors > c.remaining() / 33) {
    return Invalid(name_, absl::StrCat("tensor count ", n_tensors, " cannot fit in the ",
                                       c.remaining(), " bytes after the header"));
  }

  metadata_.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    const uint64_t at = c.pos();
    PI_ASSIGN_OR_RETURN(std::string key, c.ReadString(absl::StrCat("metadata key #", i)));
    if (key.empty()) {
      return Invalid(name_, absl::StrCat("metadata key #", i, " at offset ", at, " is empty"));
    }
    PI_ASSIGN_OR_RETURN(ValueType type, ReadValueType(c, absl::StrCat("metadata '", key, "'")));
    PI_ASSIGN_OR_RETURN(Value v, ReadValue(c, type, absl::StrCat("metadata '", key, "'"), 0));
    if (!metadata_index_.emplace(key, metadata_.size()).second) {
      return Invalid(name_, absl::StrCat("duplicate metadata key '", key, "' at offset ", at));
    }
    metadata_.emplace_back(std::move(key), std::move(v));
  }

  if (const Value* a = Find("general.alignment")) {
    auto v = a->AsUint();
    if (!v || *v == 0 || (*v & (*v - 1)) != 0 || *v > (1u << 30)) {
      return Invalid(name_,
                     absl::StrCat("general.alignment must be a power of two, got ", a->ToString()));
    }
    alignment_ = *v;
  }

  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    const uint64_t at = c.pos();
    PI_ASSIGN_OR_RETURN(t.name, c.ReadString(absl::StrCat("tensor #", i, " name")));
    if (t.name.empty() || t.name.size() > kMaxNameLength) {
      return Invalid(name_, absl::StrCat("tensor #", i, " at offset ", at,
                                         " has an invalid name length ", t.name.size()));
    }
    const std::string what = absl::StrCat("tensor '", t.name, "'");
    PI_ASSIGN_OR_RETURN(uint32_t n_dims, c.Read<uint32_t>(absl::StrCat(what, " dimension count")));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return Invalid(
          name_, absl::StrCat(what, " has ", n_dims, " dimensions (must be 1..", kMaxDims, ")"));
    }
    t.n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      PI_ASSIGN_OR_RETURN(uint64_t ne, c.Read<uint64_t>(absl::StrCat(what, " dimension ", d)));
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          t.n_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / ne) {
        return Invalid(name_, absl::StrCat(what, " dimension ", d, " = ", ne,
                                           " is zero or makes the element count overflow"));
      }
      t.n_elements *= ne;
      t.shape.push_back(ne);
    }
    PI_ASSIGN_OR_RETURN(uint32_t type_id, c.Read<uint32_t>(absl::StrCat(what, " type")));
    auto info = LookupTensorType(type_id);
    if (!info) {
      return Invalid(name_,
                     absl::StrCat(what, " has unknown or unsupported tensor type id ", type_id));
    }
    t.type = info->type;
    PI_ASSIGN_OR_RETURN(t.offset, c.Read<uint64_t>(absl::StrCat(what, " data offset")));
    if (t.offset % alignment_ != 0) {
      return Invalid(name_, absl::StrCat(what, " data offset ", t.offset,
                                         " is not a multiple of the alignment ", alignment_));
    }
    auto row = RowBytes(t.type, t.shape[0]);
    if (!row) {
      return Invalid(name_,
                     absl::StrCat(what, " row length ", t.shape[0], " is not a multiple of the ",
                                  info->name, " block size ", info->block_size));
    }
    const uint64_t rows = t.rows();
    if (*row != 0 && rows > std::numeric_limits<uint64_t>::max() / *row) {
      return Invalid(name_, absl::StrCat(what, " byte size overflows"));
    }
    t.n_bytes = *row * rows;
    if (!tensor_index_.emplace(t.name, tensors_.size()).second) {
      return Invalid(name_, absl::StrCat("duplicate tensor name '", t.name, "'"));
    }
    tensors_.push_back(std::move(t));
  }

  data_offset_ = AlignUp(c.pos(), alignment_);
  if (tensors_.empty()) {
    data_offset_ = std::min<uint64_t>(data_offset_, bytes_.size());
    return absl::OkStatus();
  }
  if (data_offset_ > bytes_.size()) {
    return Invalid(
        name_, absl::StrCat("truncated file: tensor data section starts at offset ", data_offset_,
                            " beyond the end of the file (size ", bytes_.size(), ")"));
  }
  const uint64_t data_size = bytes_.size() - data_offset_;
  for (auto& t : tensors_) {
    if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
      return Invalid(
          name_, absl::StrCat("tensor '", t.name, "' data [", data_offset_ + t.offset, ", ",
                              data_offset_ + t.offset + t.n_bytes,
                              ") extends beyond the end of the file (size ", bytes_.size(), ")"));
    }
    t.file_offset = data_offset_ + t.offset;
    t.data = bytes_.data() + t.file_offset;
  }
  // Tensor data ranges must not overlap.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo* prev = by_offset[i - 1];
    if (by_offset[i]->offset < prev->offset + prev->n_bytes) {
      return Invalid(name_, absl::StrCat("tensor '", by_offset[i]->name, "' data overlaps tensor '",
                                         prev->name, "'"));
    }
  }
  return absl::OkStatus();
}

const Value* GgufFile::Find(std::string_view key) const {
  auto it = metadata_index_.find(std::string(key));
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

namespace {

absl::Status Missing(const std::string& file, std::string_view key_sv) {
  const std::string key(key_sv);
  return absl::NotFoundError(absl::StrCat(file, ": metadata key '", key, "' is missing"));
}

absl::Status WrongType(const std::string& file, std::string_view key_sv, const Value& v,
                       const std::string& want) {
  const std::string key(key_sv);
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": metadata key '", key, "' has type ",
                   std::string(*ValueTypeName(static_cast<uint32_t>(v.type()))), " (value ",
                   v.ToString(), "), expected ", want));
}

}  // namespace

absl::StatusOr<uint64_t> GgufFile::GetUint(std::string_view key) const {
  const Value* v = Find(key);
  if (!v) return Missing(name_, key);
  if (auto u = v->AsUint()) return *u;
  return WrongType(name_, key, *v, "a non-negative integer");
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  const Value* v = Find(key);
  if (!v) return Missing(name_, key);
  if (auto i = v->AsInt()) return *i;
  return WrongType(name_, key, *v, "an integer");
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const Value* v = Find(key);
  if (!v) return Missing(name_, key);
  if (auto d = v->AsFloat()) return *d;
  return WrongType(name_, key, *v, "a float");
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  const Value* v = Find(key);
  if (!v) return Missing(name_, key);
  if (auto b = v->AsBool()) return *b;
  return WrongType(name_, key, *v, "a bool");
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  const Value* v = Find(key);
  if (!v) return Missing(name_, key);
  if (auto* s = v->AsString()) return *s;
  return WrongType(name_, key, *v, "a string");
}

absl::StatusOr<const ArrayValue*> GgufFile::GetArray(std::string_view key) const {
  const Value* v = Find(key);
  if (!v) return Missing(name_, key);
  if (auto* a = v->AsArray()) return a;
  return WrongType(name_, key, *v, "an array");
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  PI_ASSIGN_OR_RETURN(const ArrayValue* a, GetArray(key));
  if (a->elem_type != ValueType::kString) {
    return WrongType(name_, key, *Find(key), "an array of strings");
  }
  return a->strings;
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(std::string_view key) const {
  PI_ASSIGN_OR_RETURN(const ArrayValue* a, GetArray(key));
  std::vector<float> out;
  out.reserve(a->size);
  for (uint64_t i = 0; i < a->size; ++i) {
    auto d = a->FloatAt(i);
    if (!d) return WrongType(name_, key, *Find(key), "an array of floats");
    out.push_back(static_cast<float>(*d));
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  PI_ASSIGN_OR_RETURN(const ArrayValue* a, GetArray(key));
  std::vector<int64_t> out;
  out.reserve(a->size);
  for (uint64_t i = 0; i < a->size; ++i) {
    auto v = a->IntAt(i);
    if (!v) return WrongType(name_, key, *Find(key), "an array of integers");
    out.push_back(*v);
  }
  return out;
}

absl::StatusOr<uint64_t> GgufFile::GetUintOr(std::string_view key, uint64_t def) const {
  return Find(key) ? GetUint(key) : absl::StatusOr<uint64_t>(def);
}

absl::StatusOr<double> GgufFile::GetFloatOr(std::string_view key, double def) const {
  return Find(key) ? GetFloat(key) : absl::StatusOr<double>(def);
}

absl::StatusOr<bool> GgufFile::GetBoolOr(std::string_view key, bool def) const {
  return Find(key) ? GetBool(key) : absl::StatusOr<bool>(def);
}

const TensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<const TensorInfo*> GgufFile::GetTensor(std::string_view name) const {
  if (const TensorInfo* t = FindTensor(name)) return t;
  return absl::NotFoundError(absl::StrCat(name_, ": tensor '", std::string(name), "' not found"));
}

void GgufFile::Prefetch(const TensorInfo& t) const {
  if (mapping_) mapping_->AdviseWillNeed(t.file_offset, t.n_bytes);
}

void GgufFile::Evict(const TensorInfo& t) const {
  if (mapping_) mapping_->AdviseDontNeed(t.file_offset, t.n_bytes);
}

}  // namespace pipeinfer::gguf
