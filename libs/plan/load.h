// Many requests on one pipeline (docs/planner.md, section 4): a fixed point between what one
// request's round occupies on a stage and what the others add to each of its stage visits.
#pragma once

#include <functional>

#include "plan/costs.h"
#include "plan/rounds.h"

namespace pipeinfer::plan {

struct Loaded {
  Round round;  // one request's round under the load of the others
  Load load;    // what the others add to each stage visit
};

// `round_of` computes one request's round for a given load; `requests` share the stages.
Loaded SolveLoad(const Costs& c, int requests, const std::function<Round(const Load&)>& round_of);

}  // namespace pipeinfer::plan
