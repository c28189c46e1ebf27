// Reader of GGUF v2/v3 model files.
//
// The file is memory-mapped; parsing reads only the header, the metadata and the tensor table.
// Tensor data is never touched here: callers get pointers into the mapping and the kernel pages
// in exactly the bytes they read, so a pipeline stage that uses a few layers of a large model
// keeps only those layers resident.
//
// Every structural defect (truncation, bad magic or version, counts/lengths/offsets that overflow
// or point outside the file, unknown value or tensor types, misaligned or overlapping tensor data)
// is reported as an InvalidArgument/DataLoss status that names the offending item and offset.
// No input can make the parser read outside the buffer.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/mapped_file.h"
#include "gguf/tensor_type.h"
#include "gguf/value.h"

namespace pipeinfer::gguf {

inline constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian uint32
inline constexpr uint64_t kDefaultAlignment = 32;
inline constexpr uint32_t kMaxDims = 4;  // ggml's GGML_MAX_DIMS

struct TensorInfo {
  std::string name;
  // ggml order: shape[0] is the contiguous (innermost) dimension, i.e. the row length.
  std::vector<uint64_t> shape;
  TensorType type = TensorType::kF32;
  uint64_t offset = 0;            // from the start of the data section
  uint64_t n_elements = 0;        // product of shape
  uint64_t n_bytes = 0;           // bytes of data
  uint64_t file_offset = 0;       // absolute offset in the file
  const uint8_t* data = nullptr;  // into the mapping; valid while the GgufFile lives

  uint64_t rows() const;  // product of shape[1..]
  uint64_t row_length() const { return shape.empty() ? 1 : shape[0]; }
  std::string ShapeString() const;  // "[256, 259]"
};

class GgufFile {
 public:
  // Maps and parses a file.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses a caller-owned buffer that must outlive the result (tests, fuzzing).
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(std::span<const uint8_t> bytes,
                                                         std::string name = "<buffer>");

  const std::string& name() const { return name_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return bytes_.size(); }

  // Metadata in file order.
  const std::vector<std::pair<std::string, Value>>& metadata() const { return metadata_; }
  // nullptr when absent.
  const Value* Find(std::string_view key) const;

  // Typed getters: NotFound when absent, InvalidArgument when the stored type does not convert.
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<const ArrayValue*> GetArray(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;

  // Same, with a default for an absent key (a present key of the wrong type is still an error).
  absl::StatusOr<uint64_t> GetUintOr(std::string_view key, uint64_t def) const;
  absl::StatusOr<double> GetFloatOr(std::string_view key, double def) const;
  absl::StatusOr<bool> GetBoolOr(std::string_view key, bool def) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorInfo* FindTensor(std::string_view name) const;
  // NotFound naming the tensor and the file when absent.
  absl::StatusOr<const TensorInfo*> GetTensor(std::string_view name) const;

  // Residency hints for a tensor's bytes (no-ops for parsed buffers).
  void Prefetch(const TensorInfo& t) const;
  void Evict(const TensorInfo& t) const;

 private:
  GgufFile() = default;
  absl::Status ParseAll();

  std::string name_;
  std::unique_ptr<MappedFile> mapping_;  // null for Parse()
  std::span<const uint8_t> bytes_;
  uint32_t version_ = 0;
  uint64_t alignment_ = kDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::unordered_map<std::string, size_t> metadata_index_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace pipeinfer::gguf
