// The knob advice of `pipeinfer plan` (docs/planner.md, section 5): each recommendation searches
// the model (draft_max, max_inflight, stages) or applies the speculation budget's break-even rule
// (p_accept), with a one-line reason.
#pragma once

#include "absl/status/statusor.h"
#include "plan/planner.h"

namespace pipeinfer::plan {

absl::StatusOr<Recommendation> Recommend(const PlanInput& in);

}  // namespace pipeinfer::plan
