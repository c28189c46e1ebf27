#include "spec/params.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "spec/knobs.h"

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
  // The ranges live in the knob table, so that every entry point reports them the same way.
  for (const Knob& k : Knobs()) {
    double value = 0;
    if (k.type == KnobType::kCount) {
      value = p.*k.count;
    } else if (k.type == KnobType::kFraction) {
      value = p.*k.fraction;
    } else {
      continue;
    }
    if (absl::Status st = CheckKnob(k, value); !st.ok()) return st;
  }
  return absl::OkStatus();
}

uint32_t EffectiveDraftMax(const SpecParams& p) {
  if (p.draft_max != 0) return p.draft_max;
  return p.paper_tree ? kPaperDraftMax : kDynamicNodeCap;
}

uint32_t DefaultMaxInflight(uint32_t n_stages) { return std::max<uint32_t>(2, n_stages + 1); }

}  // namespace pipeinfer::spec
