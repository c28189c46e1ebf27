// Where the pipeline link delivers one session's outcomes (the last stage's RunResult or Tombstone
// for each of its runs, in sending order) or its failure (its epoch was lost, a stage reported an
// error for it, the service is shutting down). The link's reader threads deliver; the session's
// Generate handler waits. Private to the draft_server library.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pipeinfer/v1/stage.pb.h"

namespace pipeinfer::draft_server {

class SessionInbox {
 public:
  // How often a waiting session checks whether its caller cancelled.
  static constexpr std::chrono::milliseconds kPollInterval{20};

  void Deliver(v1::ResultsDownstream outcome);
  // The first failure sticks; later ones are ignored.
  void Fail(const absl::Status& status);

  // An outcome or a failure is waiting (so the session should not start drafting).
  bool Waiting() const;
  // The same, not counting outcomes of the runs `ignored` names (the controller dropped them:
  // handling them can wait until drafting pauses).
  bool Waiting(const std::function<bool(uint64_t run_id)>& ignored) const;
  // The next outcome, waiting while there is none. Fails with the session's failure, or with
  // CANCELLED once `cancelled()` (polled every kPollInterval) is true; a failure comes first,
  // then a cancellation, then an outcome.
  absl::StatusOr<v1::ResultsDownstream> Next(const std::function<bool()>& cancelled);
  // The same, waiting at most until `deadline`: nullopt when it passes first.
  absl::StatusOr<std::optional<v1::ResultsDownstream>> NextUntil(
      const std::function<bool()>& cancelled, std::chrono::steady_clock::time_point deadline);
  // Waits up to `timeout` for a failure and returns it, if one arrived.
  std::optional<absl::Status> AwaitFailure(std::chrono::milliseconds timeout);
  // Called (on the delivering thread, without the inbox's lock) after every outcome or failure, so
  // that a session waiting elsewhere (for a draft pass) notices at once. Set before delivery
  // starts.
  void SetWaker(std::function<void()> waker) { waker_ = std::move(waker); }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::ResultsDownstream> outcomes_;
  std::optional<absl::Status> failure_;
  std::function<void()> waker_;
};

}  // namespace pipeinfer::draft_server
