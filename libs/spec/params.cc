#include "spec/params.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace pipeinfer::spec {

std::string_view ModeName(Mode mode) {
  switch (mode) {
    case Mode::kPlain:
      return "plain";
    case Mode::kSync:
      return "sync";
    case Mode::kPipeInfer:
      return "pipeinfer";
  }
  return "unknown";
}

absl::StatusOr<Mode> ParseMode(std::string_view name) {
  if (name == "plain") return Mode::kPlain;
  if (name == "sync") return Mode::kSync;
  if (name == "pipeinfer") return Mode::kPipeInfer;
  return absl::InvalidArgumentError(absl::StrCat("unknown speculation mode '",
                                                 absl::string_view(name.data(), name.size()),
                                                 "' (expected plain, sync or pipeinfer)"));
}

absl::Status Validate(const SpecParams& p) {
  const auto unit = [](const char* name, float v) -> absl::Status {
    if (!(std::isfinite(v) && v >= 0.0f && v <= 1.0f)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " must be in [0, 1], got ", v));
    }
    return absl::OkStatus();
  };
  if (p.draft_max < 1 || p.draft_max > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("draft_max must be in [1, 64], got ", p.draft_max));
  }
  for (const auto& [name, v] : {std::pair<const char*, float>{"p_accept", p.p_accept},
                                {"p_split", p.p_split},
                                {"p_recovery", p.p_recovery},
                                {"p_decay", p.p_decay}}) {
    if (absl::Status st = unit(name, v); !st.ok()) return st;
  }
  if (p.max_branches < 1 || p.max_branches > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_branches must be in [1, 16], got ", p.max_branches));
  }
  if (p.max_inflight > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_inflight must be in [1, 256] (0 = derived), got ", p.max_inflight));
  }
  return absl::OkStatus();
}

uint32_t DefaultMaxInflight(uint32_t n_stages) { return std::max<uint32_t>(2, n_stages + 1); }

}  // namespace pipeinfer::spec
