// How many times slower than a release build the code under test runs: 1, or the value of
// PIPEINFER_TEST_TIME_SCALE, which the ThreadSanitizer build sets (tests/CMakeLists.txt). A test
// that bounds a latency (e.g. "freed within 1 s of the disconnect") multiplies the bound by it; the
// property checked stays the same, only the clock is slower.
#pragma once

#include <cstdlib>

namespace pipeinfer::testing {

inline int TimeScale() {
  const char* s = std::getenv("PIPEINFER_TEST_TIME_SCALE");
  const int v = s ? std::atoi(s) : 1;
  return v >= 1 ? v : 1;
}

}  // namespace pipeinfer::testing
