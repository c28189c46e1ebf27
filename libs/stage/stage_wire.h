// Wire conversions of a stage: hidden-state tensors to and from floats, and the reductions of
// the last stage's logits into result rows (ARGMAX, SPARSE, FULL) as common.proto specifies.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace pipeinfer::v1 {
class Tensor;
class ResultSpec;
class ResultRow;
class SparseRow;
}  // namespace pipeinfer::v1

namespace pipeinfer::stage {

// Decodes a hidden-state tensor of shape [n_tokens, n_embd] (F32, F16 or BF16) into floats.
absl::Status DecodeHidden(const v1::Tensor& t, int64_t n_tokens, int64_t n_embd,
                          std::vector<float>* out);
// Encodes [n_tokens, n_embd] floats as a tensor of `dtype` (a v1::DType).
void EncodeHidden(const std::vector<float>& h, int64_t n_tokens, int64_t n_embd, int dtype,
                  v1::Tensor* t);
// SPARSE reduction of one row of logits; `cap` bounds the candidates when the spec gives none.
void SparseRow(const float* logits, int64_t n_vocab, const v1::ResultSpec& spec, uint32_t cap,
               v1::SparseRow* out);
// ARGMAX (or, with kind FULL, the whole row) reduction of one row of logits.
void ReduceRow(const float* logits, int64_t n_vocab, int kind, v1::ResultRow* row);

}  // namespace pipeinfer::stage
