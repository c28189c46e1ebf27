// Who owns a stage's pipeline, and when another PipelineOpen may take it over (stage.proto,
// section 2a "Pipeline ownership"). Pure bookkeeping, no gRPC and no locking: the stage server
// calls it under its own lock, with the current time and the owner link's last activity.
//
// An open is identified by its `key` (controller_id plus, with mutual TLS, the peer certificate's
// name) and its `principal` (the certificate name with mutual TLS, else the controller_id): the
// principal is who is asking, the key which of its controllers. With L = the lease:
//   1. No owner (no link, or the owner's link ended): accepted, whatever its epoch.
//   2. The owner's own reconnect (same key, strictly greater epoch): accepted at once.
//   3. The owner's link received nothing for L: accepted.
//   4. Otherwise it is a challenge. A challenger from the owner's own principal waits (it can only
//      come in by 2 or 3). Other principals are recorded with the time they started asking (a
//      record lapses after a pause longer than the contest gap); the OLDEST one is accepted once
//      it has asked for L and the owner's principal has held the pipeline for L (its tenure, which
//      runs from the first grant to that principal after a grant to another one).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

namespace pipeinfer::stage_server {

class PipelineOwnership {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;

  enum class Verdict {
    kAccept,  // take over now (the caller retires the current link, then Grant()s)
    kWait,    // contested: the caller may wait and ask again, or refuse with `reason`
  };
  struct Decision {
    Verdict verdict = Verdict::kWait;
    std::string reason;  // why it was accepted (for the log) or why it must wait
  };
  struct Open {
    std::string controller_id;
    std::string key;        // controller_id (+ the peer certificate's name under mutual TLS)
    std::string principal;  // the peer certificate's name under mutual TLS, else controller_id
    uint64_t epoch = 0;
  };

  // `lease` (L): how long an owner's link may stay idle, how long a challenger must ask and how
  // long an owner keeps the pipeline against challengers. The contest gap (the longest pause
  // between two challenges of one principal that keeps its record) is max(L, 5 s).
  explicit PipelineOwnership(Duration lease);

  Duration lease() const { return lease_; }
  Duration contest_gap() const { return contest_gap_; }

  // Whether `open` may take the pipeline now. `last_activity`: when the owner's link last
  // received a message (or was granted). Records the challenge when it must wait.
  Decision Decide(const Open& open, TimePoint now, TimePoint last_activity);

  // The open was accepted and its link is being set up: it owns the pipeline from now on.
  void Grant(const Open& open, TimePoint now);
  // The owner's link ended (or its setup failed). The last grant is still remembered for pairing
  // Results streams with the outcomes its link produced.
  void Release() { owned_ = false; }

  bool owned() const { return owned_; }
  // The last grant (kept after Release; epoch 0 before the first grant).
  const std::string& controller_id() const { return owner_.controller_id; }
  uint64_t epoch() const { return owner_.epoch; }
  // Whether (controller_id, epoch) names the last grant (Results streams are paired by these; the
  // Results stream comes from the controller itself, not from the previous stage).
  bool IsCurrent(const std::string& controller_id, uint64_t epoch) const {
    return owner_.epoch != 0 && epoch == owner_.epoch && controller_id == owner_.controller_id;
  }
  size_t challengers() const { return challengers_.size(); }

  // What to do with a ResultsOpen (last stage). `attached_is_current`: a Results stream is
  // attached and IsCurrent().
  enum class ResultsVerdict {
    kAttach,  // attach it (replacing the attached one)
    kWait,    // the owner has its own Results stream: wait until this one's link is granted
  };
  ResultsVerdict DecideResults(const std::string& controller_id, uint64_t epoch,
                               bool attached_is_current) const;

 private:
  struct Challenger {
    TimePoint first, last;
  };
  Duration lease_;
  Duration contest_gap_;
  bool owned_ = false;
  Open owner_;
  TimePoint tenure_since_{};  // the first grant to owner_.principal after another principal
  std::map<std::string, Challenger> challengers_;  // by principal
};

}  // namespace pipeinfer::stage_server
