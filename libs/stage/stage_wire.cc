#include "stage/stage_wire.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/kernels.h"
#include "pipeinfer/v1/stage.pb.h"

namespace pipeinfer::stage {

absl::Status DecodeHidden(const v1::Tensor& t, int64_t n_tokens, int64_t n_embd,
                          std::vector<float>* out) {
  if (t.shape_size() != 2 || t.shape(0) != n_tokens || t.shape(1) != n_embd) {
    return absl::InvalidArgumentError(
        absl::StrCat("hidden tensor must have shape [", n_tokens, ", ", n_embd, "]"));
  }
  const int64_t n = n_tokens * n_embd;
  out->resize(n);
  const std::string& d = t.data();
  switch (t.dtype()) {
    case v1::DTYPE_F32:
      if (static_cast<int64_t>(d.size()) != n * 4) break;
      std::memcpy(out->data(), d.data(), n * 4);
      return absl::OkStatus();
    case v1::DTYPE_F16:
    case v1::DTYPE_BF16: {
      if (static_cast<int64_t>(d.size()) != n * 2) break;
      std::vector<uint16_t> h(n);
      std::memcpy(h.data(), d.data(), n * 2);
      if (t.dtype() == v1::DTYPE_F16) {
        kernels::HalfToFloatN(h.data(), out->data(), n);
      } else {
        for (int64_t i = 0; i < n; ++i) (*out)[i] = kernels::BF16ToFloat(h[i]);
      }
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError("hidden tensor has no supported dtype");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("hidden tensor holds ", d.size(), " bytes, which does not match its shape"));
}

void EncodeHidden(const std::vector<float>& h, int64_t n_tokens, int64_t n_embd, int dtype,
                  v1::Tensor* t) {
  t->set_dtype(static_cast<v1::DType>(dtype));
  t->add_shape(static_cast<uint32_t>(n_tokens));
  t->add_shape(static_cast<uint32_t>(n_embd));
  const int64_t n = n_tokens * n_embd;
  if (dtype == v1::DTYPE_F16) {
    std::vector<uint16_t> half(n);
    kernels::FloatToHalfN(h.data(), half.data(), n);
    t->set_data(half.data(), n * 2);
  } else if (dtype == v1::DTYPE_BF16) {
    std::vector<uint16_t> b(n);
    for (int64_t i = 0; i < n; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &h[i], 4);
      bits += 0x7fff + ((bits >> 16) & 1);  // round to nearest even
      b[i] = static_cast<uint16_t>(bits >> 16);
    }
    t->set_data(b.data(), n * 2);
  } else {
    t->set_data(h.data(), n * 4);
  }
}

// SPARSE reduction as specified in common.proto (ResultSpec): candidates = the highest raw logits
// (bounded), optionally filtered by top-k / top-p / min-p on full-vocabulary temperature-1
// probabilities, then re-weighted by softmax(logit / temperature) over the survivors.
void SparseRow(const float* logits, int64_t n_vocab, const v1::ResultSpec& spec, uint32_t cap,
               v1::SparseRow* out) {
  double m = logits[0];
  for (int64_t i = 1; i < n_vocab; ++i) m = std::max<double>(m, logits[i]);
  double z = 0;
  for (int64_t i = 0; i < n_vocab; ++i) z += std::exp(static_cast<double>(logits[i]) - m);
  const double log_z = m + std::log(z);
  uint32_t bound = spec.max_candidates();
  if (bound == 0)
    bound = spec.has_filter() && spec.filter().top_k() > 0 ? spec.filter().top_k() : cap;
  bound = static_cast<uint32_t>(std::min<int64_t>(std::max<uint32_t>(bound, 1), n_vocab));
  std::vector<int32_t> ids(n_vocab);
  for (int64_t i = 0; i < n_vocab; ++i) ids[i] = static_cast<int32_t>(i);
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(ids.begin(), ids.begin() + bound, ids.end(), by_logit);
  ids.resize(bound);
  std::vector<double> probs;
  if (spec.has_filter()) {
    const v1::LogitsFilter& f = spec.filter();
    if (f.top_k() > 0 && f.top_k() < ids.size()) ids.resize(f.top_k());
    if (f.top_p() > 0 && f.top_p() < 1) {
      double cum = 0;
      size_t keep = 0;
      while (keep < ids.size() && cum < f.top_p()) cum += std::exp(logits[ids[keep++]] - log_z);
      ids.resize(std::max<size_t>(keep, 1));
    }
    if (f.min_p() > 0) {
      const double floor = f.min_p() * std::exp(logits[ids[0]] - log_z);
      size_t keep = 1;
      while (keep < ids.size() && std::exp(logits[ids[keep]] - log_z) >= floor) ++keep;
      ids.resize(keep);
    }
    if (f.temperature() <= 0) {
      ids.resize(1);
      probs = {1.0};
    } else {
      double zt = 0;
      for (int32_t id : ids) zt += std::exp((logits[id] - logits[ids[0]]) / f.temperature());
      for (int32_t id : ids)
        probs.push_back(std::exp((logits[id] - logits[ids[0]]) / f.temperature()) / zt);
    }
  } else {
    for (int32_t id : ids) probs.push_back(std::exp(logits[id] - log_z));
  }
  // Survivors are already in descending logit order, hence descending probability.
  for (size_t i = 0; i < ids.size(); ++i) {
    out->add_token_ids(static_cast<uint32_t>(ids[i]));
    out->add_probs(static_cast<float>(probs[i]));
    if (spec.include_logits()) out->add_logits(logits[ids[i]]);
  }
  if (spec.include_logits()) out->set_log_z(static_cast<float>(log_z));
}

void ReduceRow(const float* logits, int64_t n_vocab, int kind, v1::ResultRow* row) {
  if (kind == v1::RESULT_KIND_FULL) {
    row->mutable_full()->set_logits_f32(logits, n_vocab * 4);
    return;
  }
  const int64_t best = std::max_element(logits, logits + n_vocab) - logits;
  double z = 0;
  for (int64_t i = 0; i < n_vocab; ++i)
    z += std::exp(static_cast<double>(logits[i] - logits[best]));
  auto* a = row->mutable_argmax();
  a->set_token_id(static_cast<uint32_t>(best));
  a->set_logit(logits[best]);
  a->set_prob(static_cast<float>(1.0 / z));
}

}  // namespace pipeinfer::stage
