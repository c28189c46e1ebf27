#include "gguf/writer.h"

#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gguf/reader.h"

namespace pipeinfer::gguf {
namespace {

template <typename T>
void Append(std::vector<uint8_t>& out, T v) {
  uint8_t b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.insert(out.end(), b, b + sizeof(T));
}

void AppendString(std::vector<uint8_t>& out, const std::string& s) {
  Append<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

GgufWriter::GgufWriter(uint64_t alignment, uint32_t version)
    : alignment_(alignment), version_(version) {
  if (alignment_ != kDefaultAlignment)
    SetUint32("general.alignment", static_cast<uint32_t>(alignment_));
}

void GgufWriter::Put(const std::string& key, ValueType type, std::vector<uint8_t> payload) {
  for (auto& kv : kvs_) {
    if (kv.key == key) {
      kv.type = type;
      kv.payload = std::move(payload);
      return;
    }
  }
  kvs_.push_back(Kv{key, type, type, std::move(payload)});
}

void GgufWriter::SetUint32(const std::string& key, uint32_t v) {
  std::vector<uint8_t> p;
  Append(p, v);
  Put(key, ValueType::kUint32, std::move(p));
}
void GgufWriter::SetInt32(const std::string& key, int32_t v) {
  std::vector<uint8_t> p;
  Append(p, v);
  Put(key, ValueType::kInt32, std::move(p));
}
void GgufWriter::SetUint64(const std::string& key, uint64_t v) {
  std::vector<uint8_t> p;
  Append(p, v);
  Put(key, ValueType::kUint64, std::move(p));
}
void GgufWriter::SetFloat32(const std::string& key, float v) {
  std::vector<uint8_t> p;
  Append(p, v);
  Put(key, ValueType::kFloat32, std::move(p));
}
void GgufWriter::SetBool(const std::string& key, bool v) {
  Put(key, ValueType::kBool, {static_cast<uint8_t>(v ? 1 : 0)});
}
void GgufWriter::SetString(const std::string& key, const std::string& v) {
  std::vector<uint8_t> p;
  AppendString(p, v);
  Put(key, ValueType::kString, std::move(p));
}
void GgufWriter::SetStringArray(const std::string& key, const std::vector<std::string>& v) {
  std::vector<uint8_t> p;
  Append<uint32_t>(p, static_cast<uint32_t>(ValueType::kString));
  Append<uint64_t>(p, v.size());
  for (const auto& s : v) AppendString(p, s);
  Put(key, ValueType::kArray, std::move(p));
}
void GgufWriter::SetFloat32Array(const std::string& key, const std::vector<float>& v) {
  std::vector<uint8_t> p;
  Append<uint32_t>(p, static_cast<uint32_t>(ValueType::kFloat32));
  Append<uint64_t>(p, v.size());
  for (float x : v) Append(p, x);
  Put(key, ValueType::kArray, std::move(p));
}
void GgufWriter::SetInt32Array(const std::string& key, const std::vector<int32_t>& v) {
  std::vector<uint8_t> p;
  Append<uint32_t>(p, static_cast<uint32_t>(ValueType::kInt32));
  Append<uint64_t>(p, v.size());
  for (int32_t x : v) Append(p, x);
  Put(key, ValueType::kArray, std::move(p));
}

absl::Status GgufWriter::AddTensor(const std::string& name, TensorType type,
                                   std::vector<uint64_t> shape, std::vector<uint8_t> data) {
  if (shape.empty() || shape.size() > kMaxDims) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': bad rank ", shape.size()));
  }
  uint64_t rows = 1;
  for (size_t i = 1; i < shape.size(); ++i) rows *= shape[i];
  auto row = RowBytes(type, shape[0]);
  if (!row) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "': row length ", shape[0], " not a multiple of the block"));
  }
  if (*row * rows != data.size()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': ", data.size(),
                                                   " bytes given, layout needs ", *row * rows));
  }
  tensors_.push_back(Tensor{name, type, std::move(shape), std::move(data)});
  return absl::OkStatus();
}

std::vector<uint8_t> GgufWriter::Header(std::vector<uint64_t>* offsets) const {
  std::vector<uint8_t> out;
  Append<uint32_t>(out, kMagic);
  Append<uint32_t>(out, version_);
  Append<uint64_t>(out, tensors_.size());
  Append<uint64_t>(out, kvs_.size());
  for (const auto& kv : kvs_) {
    AppendString(out, kv.key);
    Append<uint32_t>(out, static_cast<uint32_t>(kv.type));
    out.insert(out.end(), kv.payload.begin(), kv.payload.end());
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    AppendString(out, t.name);
    Append<uint32_t>(out, static_cast<uint32_t>(t.shape.size()));
    for (uint64_t d : t.shape) Append<uint64_t>(out, d);
    Append<uint32_t>(out, static_cast<uint32_t>(t.type));
    Append<uint64_t>(out, offset);
    offsets->push_back(offset);
    offset = AlignUp(offset + t.data.size(), alignment_);
  }
  out.resize(AlignUp(out.size(), alignment_), 0);
  return out;
}

std::vector<uint8_t> GgufWriter::Serialize() const {
  std::vector<uint64_t> offsets;
  std::vector<uint8_t> out = Header(&offsets);
  const uint64_t base = out.size();
  for (size_t i = 0; i < tensors_.size(); ++i) {
    out.resize(base + offsets[i], 0);
    out.insert(out.end(), tensors_[i].data.begin(), tensors_[i].data.end());
  }
  return out;
}

absl::Status GgufWriter::WriteFile(const std::string& path) const {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return absl::UnavailableError(absl::StrCat("cannot create '", path, "'"));
  std::vector<uint64_t> offsets;
  std::vector<uint8_t> header = Header(&offsets);
  f.write(reinterpret_cast<const char*>(header.data()), header.size());
  uint64_t written = 0;
  static const char kZeros[64] = {};
  for (size_t i = 0; i < tensors_.size(); ++i) {
    while (written < offsets[i]) {
      const uint64_t n = std::min<uint64_t>(sizeof(kZeros), offsets[i] - written);
      f.write(kZeros, n);
      written += n;
    }
    f.write(reinterpret_cast<const char*>(tensors_[i].data.data()), tensors_[i].data.size());
    written += tensors_[i].data.size();
  }
  f.close();
  if (!f) return absl::UnavailableError(absl::StrCat("failed writing '", path, "'"));
  return absl::OkStatus();
}

}  // namespace pipeinfer::gguf
