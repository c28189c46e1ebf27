// Human-readable report of a GGUF file: header, metadata, llama hyperparameters, tokenizer summary
// and the tensor table (name, type, shape, bytes, offset).
#pragma once

#include <string>

#include "gguf/reader.h"

namespace pipeinfer::gguf {

struct InspectOptions {
  size_t max_array_items = 8;  // array values are elided after this many items
};

std::string InspectReport(const GgufFile& f, const InspectOptions& opts = {});

}  // namespace pipeinfer::gguf
