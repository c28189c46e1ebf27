#include "stage_server/pipeline_ownership.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace pipeinfer::stage_server {
namespace {

int64_t Ms(PipelineOwnership::Duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

}  // namespace

PipelineOwnership::PipelineOwnership(Duration lease)
    : lease_(std::max<Duration>(lease, std::chrono::milliseconds(1))),
      contest_gap_(std::max<Duration>(lease_, std::chrono::seconds(5))) {}

PipelineOwnership::Decision PipelineOwnership::Decide(const Open& open, TimePoint now,
                                                      TimePoint last_activity) {
  std::erase_if(challengers_, [&](const auto& c) { return now - c.second.last > contest_gap_; });
  if (!owned_) return {Verdict::kAccept, "no controller holds the pipeline"};
  if (open.key == owner_.key && open.epoch > owner_.epoch) {
    return {Verdict::kAccept, absl::StrCat("its controller reconnects (epoch ", owner_.epoch, ")")};
  }
  const Duration idle = now - last_activity;
  const std::string holder =
      absl::StrCat("controller '", owner_.principal, "' (epoch ", owner_.epoch, ")");
  if (idle >= lease_) {
    return {Verdict::kAccept,
            absl::StrCat("the link of ", holder, " was idle for ", Ms(idle), " ms")};
  }
  if (open.principal == owner_.principal) {
    return {Verdict::kWait, absl::StrCat("the pipeline is held by ", holder,
                                         " and this open is neither its reconnect (a greater "
                                         "epoch) nor after an idle lease")};
  }
  Challenger& me = challengers_.try_emplace(open.principal, Challenger{now, now}).first->second;
  me.last = now;
  bool oldest = true;
  for (const auto& [principal, c] : challengers_) {
    if (principal != open.principal && c.first < me.first) oldest = false;
  }
  const Duration tenure = now - tenure_since_, asking = now - me.first;
  if (oldest && tenure >= lease_ && asking >= lease_) {
    return {Verdict::kAccept, absl::StrCat("'", open.principal, "' contested the pipeline of ",
                                           holder, " for ", Ms(asking), " ms")};
  }
  const Duration left = std::max(lease_ - tenure, lease_ - asking);
  return {Verdict::kWait,
          absl::StrCat("the pipeline is held by ", holder, ", active ", Ms(idle),
                       " ms ago; a takeover is possible in ", Ms(std::max(left, Duration{})), " ms",
                       oldest ? "" : " (after an older challenger)", " if asked again within ",
                       Ms(contest_gap_), " ms")};
}

void PipelineOwnership::Grant(const Open& open, TimePoint now) {
  // Tenure belongs to the principal: neither a reconnect nor a release followed by a new grant to
  // the same principal restarts it (else an owner could keep resetting it).
  if (owner_.epoch == 0 || open.principal != owner_.principal) tenure_since_ = now;
  owned_ = true;
  owner_ = open;
  challengers_.erase(open.principal);
}

PipelineOwnership::ResultsVerdict PipelineOwnership::DecideResults(const std::string& controller_id,
                                                                   uint64_t epoch,
                                                                   bool attached_is_current) const {
  if (IsCurrent(controller_id, epoch)) return ResultsVerdict::kAttach;
  // Opened before its Pipeline stream (the usual order): attached while nobody owns the pipeline
  // or the owner has no Results stream of its own; otherwise it waits for its grant.
  if (!owned_ || !attached_is_current) return ResultsVerdict::kAttach;
  return ResultsVerdict::kWait;
}

}  // namespace pipeinfer::stage_server
