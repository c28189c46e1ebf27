#include "common/link_pacer.h"

#include <algorithm>

namespace pipeinfer {

LinkPacer::Clock::duration LinkPacer::Serialization(size_t wire_bytes) const {
  if (rate_mbps_ <= 0) return Clock::duration::zero();
  // bytes × 8 bits / (R × 10^6 bit/s) = bytes × 8000 / R nanoseconds.
  const double ns = static_cast<double>(wire_bytes) * 8000.0 / rate_mbps_;
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::nano>(ns));
}

LinkPacer::Clock::time_point LinkPacer::Release(Clock::time_point now, size_t payload_bytes) {
  if (rate_mbps_ <= 0) return now;
  busy_until_ = std::max(now, busy_until_) + Serialization(LinkWireBytes(payload_bytes));
  return busy_until_;
}

}  // namespace pipeinfer
