// Writer of GGUF v3 files (little-endian): metadata of any value type and tensors with their
// data, laid out with the file's alignment. Used by `pipeinfer gguf synth` and by tests that need
// exact or deliberately damaged files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gguf/tensor_type.h"
#include "gguf/value.h"

namespace pipeinfer::gguf {

class GgufWriter {
 public:
  explicit GgufWriter(uint64_t alignment = 32, uint32_t version = 3);

  void SetUint32(const std::string& key, uint32_t v);
  void SetInt32(const std::string& key, int32_t v);
  void SetUint64(const std::string& key, uint64_t v);
  void SetFloat32(const std::string& key, float v);
  void SetBool(const std::string& key, bool v);
  void SetString(const std::string& key, const std::string& v);
  void SetStringArray(const std::string& key, const std::vector<std::string>& v);
  void SetFloat32Array(const std::string& key, const std::vector<float>& v);
  void SetInt32Array(const std::string& key, const std::vector<int32_t>& v);

  // `shape[0]` is the row length. The data size must match the type's layout exactly.
  absl::Status AddTensor(const std::string& name, TensorType type, std::vector<uint64_t> shape,
                         std::vector<uint8_t> data);

  // The complete file image.
  std::vector<uint8_t> Serialize() const;
  absl::Status WriteFile(const std::string& path) const;

 private:
  struct Kv {
    std::string key;
    ValueType type;
    ValueType elem_type;
    std::vector<uint8_t> payload;  // encoded value after the type id (incl. array header)
  };
  struct Tensor {
    std::string name;
    TensorType type;
    std::vector<uint64_t> shape;
    std::vector<uint8_t> data;
  };
  void Put(const std::string& key, ValueType type, std::vector<uint8_t> payload);
  std::vector<uint8_t> Header(std::vector<uint64_t>* offsets) const;

  uint64_t alignment_;
  uint32_t version_;
  std::vector<Kv> kvs_;
  std::vector<Tensor> tensors_;
};

}  // namespace pipeinfer::gguf
