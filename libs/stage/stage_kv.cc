// The session and KV bookkeeping of a stage: session open/close, KV operations, tombstones and
// barriers (every message that is not a run), forks and poisoned positions (stage.proto sections 4
// and 6).
#include <spdlog/spdlog.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kv/kv_cache.h"
#include "log/log.h"
#include "pipeinfer/v1/stage.pb.h"
#include "stage/stage_core.h"

namespace pipeinfer::stage {

StageOutput StageCore::HandleMessage(const v1::StageDownstream& msg) {
  StageOutput out;
  switch (msg.msg_case()) {
    case v1::StageDownstream::kSessionOpen: {
      const auto& o = msg.session_open();
      const uint64_t sid = o.session_id();
      absl::Status st;
      if (sid == 0) {
        st = absl::InvalidArgumentError("session id 0");
      } else if (sessions_.count(sid)) {
        st = absl::AlreadyExistsError(absl::StrCat("session ", sid, " is already open"));
      } else if (o.max_context() == 0 ||
                 o.max_context() > static_cast<uint32_t>(engine_->max_context())) {
        st = absl::InvalidArgumentError(absl::StrCat("max_context ", o.max_context(),
                                                     " outside [1, ", engine_->max_context(), "]"));
      } else if (o.result().kind() == v1::RESULT_KIND_UNSPECIFIED) {
        st = absl::InvalidArgumentError("SessionOpen.result.kind is unspecified");
      }
      int64_t reserve = 0;
      if (st.ok() && o.kv_reserve_tokens() > 0) {
        reserve = kv::ReservationBlocks(o.kv_reserve_tokens(), o.max_partitions(),
                                        engine_->options().kv_block_tokens);
      }
      // A reservation larger than this stage's whole cache can never be admitted: OUT_OF_RANGE
      // (not RESOURCE_EXHAUSTED, which says that waiting for other sessions could help).
      if (const int64_t total = engine_->kv().Stats().blocks_total; st.ok() && reserve > total) {
        st = absl::OutOfRangeError(
            absl::StrCat("kv_reserve_tokens ", o.kv_reserve_tokens(), " with max_partitions ",
                         o.max_partitions(), " needs ", reserve,
                         " KV blocks, more than this stage's whole cache (", total, " blocks)"));
      }
      if (st.ok()) st = engine_->kv().OpenSession(sid, reserve);
      if (!st.ok()) {
        FailSession(sid, nullptr, st, 0, out);
        // Keep the stages downstream consistent: they get the same open and fail the same way.
      } else {
        Session s;
        s.max_context = o.max_context();
        s.max_partitions = o.max_partitions();
        s.reserved = o.kv_reserve_tokens() > 0;
        s.request_id = o.request_id();
        s.result_kind = o.result().kind();
        s.max_candidates = o.result().max_candidates();
        s.result = std::make_shared<v1::ResultSpec>(o.result());
        sessions_[sid] = std::move(s);
        const log::RequestScope scope(o.request_id());
        log::Event(spdlog::level::info, "session open",
                   {{"session", sid},
                    {"max_context", static_cast<int64_t>(o.max_context())},
                    {"kv_reserve_tokens", static_cast<int64_t>(o.kv_reserve_tokens())}});
      }
      Forward(msg, out);
      break;
    }
    case v1::StageDownstream::kSessionClose: {
      const uint64_t sid = msg.session_close().session_id();
      if (auto it = sessions_.find(sid); it != sessions_.end()) {
        const log::RequestScope scope(it->second.request_id);
        log::Event(spdlog::level::info, "session closed",
                   {{"session", sid}, {"failed", it->second.failed ? "true" : "false"}});
        sessions_.erase(it);
        (void)engine_->kv().CloseSession(sid);
      }
      Forward(msg, out);
      break;
    }
    case v1::StageDownstream::kTombstone:
      HandleTombstone(msg, out);
      break;
    case v1::StageDownstream::kKv:
      HandleKvOp(msg, out);
      Forward(msg, out);
      break;
    case v1::StageDownstream::kBarrier:
      if (engine_->model().is_last()) {
        auto r = std::make_unique<v1::ResultsDownstream>();
        *r->mutable_barrier() = msg.barrier();
        out.results.push_back(std::move(r));
      } else {
        Forward(msg, out);
      }
      break;
    default:
      // Unknown message kinds (a newer peer) are forwarded unchanged and otherwise ignored.
      Forward(msg, out);
      break;
  }
  return out;
}

void StageCore::HandleKvOp(const v1::StageDownstream& msg, StageOutput& out) {
  const v1::KvOp& op = msg.kv();
  const uint64_t sid = op.session_id();
  auto it = sessions_.find(sid);
  if (it == sessions_.end()) {
    FailSession(sid, nullptr,
                absl::FailedPreconditionError(absl::StrCat("KV op for unknown session ", sid)), 0,
                out);
    return;
  }
  Session& s = it->second;
  if (s.failed) return;
  kv::KvCache& kv = engine_->kv();
  absl::Status st;
  switch (op.op_case()) {
    case v1::KvOp::kFork:
      st = ApplyFork(sid, s, op.fork().partition(), op.fork().src_partition(),
                     op.fork().src_branch(), op.fork().n_positions());
      break;
    case v1::KvOp::kCommit: {
      const auto& c = op.commit();
      auto p = s.parts.find(c.partition());
      if (c.partition() == 0 || p == s.parts.end()) {
        st = absl::FailedPreconditionError(
            absl::StrCat("commit of partition ", c.partition(), " which is not live"));
        break;
      }
      int32_t leaf = -1;
      if (p->second.written && (p->second.tree || p->second.valid_len == kAllValid)) {
        auto b = p->second.branch_leaf.find(c.branch());
        if (b == p->second.branch_leaf.end()) {
          st = absl::FailedPreconditionError(
              absl::StrCat("partition ", c.partition(), " has no branch ", c.branch()));
          break;
        }
        leaf = b->second;
      }
      if (c.n_positions() == 0) {
        st = absl::InvalidArgumentError("commit of 0 positions");
        break;
      }
      if (p->second.tree) {
        st = CheckTreePath(p->second, *kv.Find(sid, c.partition()), c.partition(), leaf,
                           static_cast<int32_t>(c.n_positions()));
        if (!st.ok()) break;
      }
      if (p->second.valid_len != kAllValid &&
          static_cast<int32_t>(c.n_positions()) > p->second.valid_len) {
        st = absl::FailedPreconditionError(absl::StrCat("commit of ", c.n_positions(),
                                                        " positions adopts poisoned positions (",
                                                        p->second.valid_len, " valid)"));
        break;
      }
      st = kv.Commit(sid, c.partition(), leaf, static_cast<int32_t>(c.n_positions()));
      if (st.ok()) {
        s.canonical_valid = static_cast<int32_t>(c.n_positions());
        if (c.release()) {
          st = kv.Release(sid, c.partition());
          s.parts.erase(c.partition());
        }
      }
      break;
    }
    case v1::KvOp::kRelease:
      for (uint32_t part : op.release().partitions()) {
        if (part == 0 || !s.parts.count(part)) {
          st = absl::FailedPreconditionError(
              absl::StrCat("release of partition ", part, " which is not live"));
          break;
        }
        st = kv.Release(sid, part);
        s.parts.erase(part);
        if (!st.ok()) break;
      }
      break;
    case v1::KvOp::kTruncate: {
      const int32_t n = static_cast<int32_t>(op.truncate().n_positions());
      if (n > kv.Find(sid, 0)->size()) {
        st = absl::OutOfRangeError(
            absl::StrCat("truncate to ", n, " beyond canonical length ", kv.Find(sid, 0)->size()));
        break;
      }
      st = kv.Commit(sid, 0, -1, n);
      s.canonical_valid = std::min(s.canonical_valid, n);
      break;
    }
    default:
      st = absl::InvalidArgumentError("KvOp without an operation");
  }
  if (!st.ok()) FailSession(sid, &s, st, 0, out);
}

void StageCore::HandleTombstone(const v1::StageDownstream& msg, StageOutput& out) {
  const v1::Tombstone& t = msg.tombstone();
  ForgetCancelled(t.run_id());
  auto it = sessions_.find(t.session_id());
  if (it != sessions_.end() && !it->second.failed) {
    Session& s = it->second;
    absl::Status st;
    if (t.has_fork()) {
      st = ApplyFork(t.session_id(), s, t.fork().partition(), t.fork().src_partition(),
                     t.fork().src_branch(), t.fork().n_positions());
    }
    if (st.ok()) {
      const std::vector<int32_t> parents(t.parents().begin(), t.parents().end());
      const std::vector<int32_t> anchors(t.anchors().begin(), t.anchors().end());
      st = PoisonRun(t.session_id(), s, t.kind(), t.partition(), t.n_tokens(), parents, anchors);
    }
    if (!st.ok()) FailSession(t.session_id(), &s, st, t.run_id(), out);
  }
  EmitTombstone(msg, t.reason(), out);
}

absl::Status StageCore::ApplyFork(uint64_t sid, Session& s, uint32_t part, uint32_t src,
                                  uint32_t src_branch, uint32_t n_positions) {
  if (part == 0) return absl::InvalidArgumentError("fork into partition 0 (canonical)");
  if (s.parts.count(part)) {
    return absl::AlreadyExistsError(absl::StrCat("partition ", part, " is already live"));
  }
  if ((s.reserved || s.max_partitions > 0) && s.parts.size() >= s.max_partitions) {
    return absl::ResourceExhaustedError(absl::StrCat("fork of partition ", part, ": the session ",
                                                     "already has its maximum of ",
                                                     s.max_partitions, " live partitions"));
  }
  if (n_positions >= s.max_context) {
    return absl::OutOfRangeError(absl::StrCat(
        "fork of ", n_positions, " positions reaches the session's context ", s.max_context));
  }
  kv::KvCache& kv = engine_->kv();
  PI_ASSIGN_OR_RETURN(const kv::Sequence* from, kv.Get(sid, src));
  int32_t leaf = -1;
  int32_t available = from->size();
  int32_t src_valid = s.canonical_valid;
  if (src != 0) {
    auto it = s.parts.find(src);
    if (it == s.parts.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("fork source partition ", src, " is not live"));
    }
    const Partition& p = it->second;
    src_valid = p.valid_len;
    if (p.tree) {
      auto b = p.branch_leaf.find(src_branch);
      if (b == p.branch_leaf.end()) {
        return absl::FailedPreconditionError(
            absl::StrCat("partition ", src, " has no branch ", src_branch));
      }
      leaf = b->second;
      PI_RETURN_IF_ERROR(CheckTreePath(p, *from, src, leaf, static_cast<int32_t>(n_positions)));
      available = from->position[leaf] + 1;
      src_valid = kAllValid;
    } else if (p.written && p.valid_len != kAllValid) {
      available = p.prefix_len;  // its run was skipped: only the prefix is real
    } else if (p.written) {
      auto b = p.branch_leaf.find(src_branch);
      if (b == p.branch_leaf.end()) {
        return absl::FailedPreconditionError(
            absl::StrCat("partition ", src, " has no branch ", src_branch));
      }
      leaf = b->second;
      available = from->position[leaf] + 1;
    }
  } else if (src_branch != 0) {
    return absl::InvalidArgumentError("canonical has only branch 0");
  }
  if (static_cast<int32_t>(n_positions) > available && (src == 0 || src_valid == kAllValid)) {
    return absl::OutOfRangeError(
        absl::StrCat("fork of ", n_positions, " positions from a path of ", available));
  }
  const int32_t copied = std::min<int32_t>(n_positions, available);
  PI_RETURN_IF_ERROR(kv.Fork(sid, part, src, leaf, copied));
  if (static_cast<int32_t>(n_positions) > copied) {
    // Positions beyond a skipped run's prefix: placeholders, poisoned.
    std::vector<int32_t> chain(n_positions - copied);
    for (size_t i = 0; i < chain.size(); ++i) chain[i] = static_cast<int32_t>(i) - 1;
    auto st = kv.Append(sid, part, chain);
    if (!st.ok()) {
      (void)kv.Release(sid, part);
      return st.status();
    }
  }
  Partition p;
  p.prefix_len = static_cast<int32_t>(n_positions);
  p.valid_len =
      std::min<int32_t>(src_valid == kAllValid ? copied : std::min(src_valid, copied), copied);
  if (p.valid_len == p.prefix_len) p.valid_len = kAllValid;  // prefix fully valid
  s.parts[part] = p;
  return absl::OkStatus();
}

absl::Status StageCore::CheckTreePath(const Partition& p, const kv::Sequence& seq, uint32_t part,
                                      int32_t leaf, int32_t n_positions) {
  if (leaf < 0) return absl::OkStatus();
  for (int32_t slot : kv::KvCache::PathOf(seq, leaf)) {
    if (seq.position[slot] >= n_positions) break;
    if (slot < static_cast<int32_t>(p.poisoned.size()) && p.poisoned[slot]) {
      return absl::FailedPreconditionError(
          absl::StrCat("partition ", part, ": the path to slot ", leaf, " has poisoned position ",
                       seq.position[slot], " (a skipped or stopped run)"));
    }
  }
  return absl::OkStatus();
}

void StageCore::MakeTree(Partition& p, int32_t seq_size) {
  p.written = true;
  if (p.tree) return;
  p.tree = true;
  p.poisoned.assign(static_cast<size_t>(seq_size), 0);
  // The prefix is linear (slot = position): what its fork left unreal stays unreal.
  if (p.valid_len != kAllValid) {
    for (int32_t slot = std::max(p.valid_len, 0); slot < seq_size; ++slot) p.poisoned[slot] = 1;
  }
}

absl::Status StageCore::PoisonRun(uint64_t sid, Session& s, int kind, uint32_t part,
                                  uint32_t n_tokens, std::span<const int32_t> parents,
                                  std::span<const int32_t> anchors) {
  if (kind == v1::RUN_KIND_PLAIN) {
    std::vector<int32_t> chain(n_tokens);
    for (uint32_t i = 0; i < n_tokens; ++i) chain[i] = static_cast<int32_t>(i) - 1;
    const int32_t before = engine_->kv().Find(sid, 0)->size();
    PI_RETURN_IF_ERROR(engine_->kv().Append(sid, 0, chain).status());
    s.canonical_valid = std::min(s.canonical_valid, before);
    return absl::OkStatus();
  }
  auto it = s.parts.find(part);
  if (it == s.parts.end()) {
    return absl::FailedPreconditionError(absl::StrCat("partition ", part, " is not live"));
  }
  if (!anchors.empty()) {
    // A tree run: its slots exist on every stage, poisoned, so slot numbers stay the same.
    Partition& p = it->second;
    if (p.written && !p.tree) {
      return absl::FailedPreconditionError(
          absl::StrCat("partition ", part, " was written by a run without anchors"));
    }
    if (parents.size() != n_tokens || anchors.size() != n_tokens) {
      return absl::InvalidArgumentError("a tree run's tombstone needs its parents and anchors");
    }
    MakeTree(p, engine_->kv().Find(sid, part)->size());
    PI_ASSIGN_OR_RETURN(std::vector<int32_t> slots,
                        engine_->kv().Append(sid, part, parents, anchors));
    p.poisoned.resize(engine_->kv().Find(sid, part)->size(), 0);
    for (int32_t slot : slots) p.poisoned[slot] = 1;
    return absl::OkStatus();
  }
  it->second.written = true;
  it->second.valid_len = std::min(it->second.valid_len, it->second.prefix_len);
  return absl::OkStatus();
}

}  // namespace pipeinfer::stage
