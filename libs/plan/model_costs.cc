#include "plan/model_costs.h"

#include <cmath>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace pipeinfer::plan {

absl::StatusOr<double> BitsPerWeight(absl::string_view quant) {
  const std::string q = absl::AsciiStrToLower(quant);
  // Block formats include their scales: q8_0 = 34 bytes per 32 weights, q4_0 = 18 per 32, the
  // k-quants as llama.cpp reports them.
  if (q == "f32") return 32.0;
  if (q == "f16" || q == "bf16") return 16.0;
  if (q == "q8_0") return 8.5;
  if (q == "q6_k") return 6.5625;
  if (q == "q5_k" || q == "q5_k_m") return 5.5;
  if (q == "q4_k" || q == "q4_k_m") return 4.5;
  if (q == "q4_0") return 4.5;
  return absl::InvalidArgumentError(absl::StrCat(
      "quant must be one of f32, f16, bf16, q8_0, q6_k, q5_k, q4_k, q4_0, got '", quant, "'"));
}

absl::StatusOr<double> WireBytesPerValue(absl::string_view dtype) {
  const std::string d = absl::AsciiStrToLower(dtype);
  if (d == "f32") return 4.0;
  if (d == "f16" || d == "bf16") return 2.0;
  if (d == "q8_0") return 34.0 / 32.0;
  return absl::InvalidArgumentError(
      absl::StrCat("wire_dtype must be one of f32, f16, bf16, q8_0, got '", dtype, "'"));
}

absl::StatusOr<StageCosts> CostsFromModelSize(const ModelSize& m) {
  const auto bad = [](absl::string_view field, absl::string_view range, double got) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be ", range, ", got ", got));
  };
  if (!std::isfinite(m.model_gb) || m.model_gb <= 0) return bad("model_gb", "> 0", m.model_gb);
  if (!std::isfinite(m.node_gbps) || m.node_gbps <= 0) return bad("node_gbps", "> 0", m.node_gbps);
  if (!std::isfinite(m.draft_gb) || m.draft_gb < 0) return bad("draft_gb", ">= 0", m.draft_gb);
  if (!std::isfinite(m.token_fraction) || m.token_fraction < 0 || m.token_fraction > 10) {
    return bad("token_fraction", "in [0, 10]", m.token_fraction);
  }
  if (m.stages < 1) return bad("stages", ">= 1", m.stages);
  StageCosts c;
  // GB / (GB/s) = s; times 1e6 for microseconds.
  c.stage_us = m.model_gb / m.stages / m.node_gbps * 1e6;
  c.token_us = m.token_fraction * c.stage_us;
  c.draft_us = m.draft_gb / m.node_gbps * 1e6;
  return c;
}

}  // namespace pipeinfer::plan
