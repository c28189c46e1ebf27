// Benchmark-only serialization delay of an emulated link (`--emulate-link-mbps`): a link of R
// Mbit/s needs bytes × 8 / R microseconds to put a message on the wire, and a message cannot start
// before the previous one on the same link (one direction) has finished. A LinkPacer keeps the end
// of the last transmission and returns each new message's end:
//
//   tx_end = max(now, previous tx_end) + WireBytes(payload) × 8 / R
//
// An idle link accumulates no credit: a message handed over after the line went idle starts at its
// own hand-over time. Not thread-safe; the owner serializes calls (the order of the calls is the
// order on the wire).
#pragma once

#include <chrono>
#include <cstddef>

namespace pipeinfer {

// Bytes added to every message's serialized protobuf size for the framing that a gRPC stream puts
// around it: the 5-byte gRPC length prefix and the 9-byte HTTP/2 DATA frame header. TCP, IP and
// Ethernet headers are not counted (docs/link-emulation.md).
inline constexpr size_t kLinkFramingBytes = 5 + 9;

// The bytes a message of `payload_bytes` (ByteSizeLong()) occupies on an emulated link.
constexpr size_t LinkWireBytes(size_t payload_bytes) { return payload_bytes + kLinkFramingBytes; }

class LinkPacer {
 public:
  using Clock = std::chrono::steady_clock;

  // rate_mbps <= 0: no pacing, Release returns `now`.
  explicit LinkPacer(double rate_mbps) : rate_mbps_(rate_mbps > 0 ? rate_mbps : 0) {}

  double rate_mbps() const { return rate_mbps_; }
  bool pacing() const { return rate_mbps_ > 0; }

  // How long `wire_bytes` take on the wire at the rate (zero without pacing).
  Clock::duration Serialization(size_t wire_bytes) const;

  // The end of the transmission of a message of `payload_bytes` handed over at `now`: framing
  // added, queued behind the previous message. Returns `now` without pacing.
  Clock::time_point Release(Clock::time_point now, size_t payload_bytes);

 private:
  double rate_mbps_;
  Clock::time_point busy_until_{};  // end of the last transmission
};

}  // namespace pipeinfer
