// A scripted, in-memory pipeline for controller tests. It applies the controller's runs and KV
// operations in stream order with the semantics of stage.proto (partitions forked from path
// prefixes, commits that adopt a prefix of a partition, releases, poison for skipped runs,
// dependency tombstones), and computes each result row from the tokens actually stored on the
// path it attends to, so a wrong fork, commit or position shows up as a wrong token. When the run
// is applied is up to the test, which interleaves Step(), outcome delivery and Speculate() at
// random to explore orderings. Cancelled runs are skipped or computed at random (both happen on
// real stages, depending on timing).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "spec/controller.h"

namespace pipeinfer::spec::testing {

struct Cell {
  int32_t token = -1;
  bool poisoned = false;
  int32_t parent = -1;  // index of the previous cell of its path (-1: position 0)
  uint32_t pos = 0;
  uint32_t branch = 0;
};

// A partition (or canonical): a linear prefix, then the cells of the one run that wrote it.
struct Seq {
  std::vector<Cell> cells;
  size_t prefix = 0;  // cells [0, prefix) are the linear prefix
  bool written = false;
};

// The target: given the path (all tokens up to and including the last one), the row.
using TargetFn = std::function<TargetRow(const std::vector<int32_t>& path)>;

class FakePipeline : public PipelineSink {
 public:
  FakePipeline(TargetFn target, uint64_t seed, double p_skip_cancelled)
      : target_(std::move(target)), rng_(seed), p_skip_(p_skip_cancelled) {}

  absl::StatusOr<uint64_t> SendRun(const RunSpec& run) override {
    const uint64_t id = next_id_;
    next_id_ += 1 + (rng_() % 3);  // ids increase with gaps, as on a shared stream
    queue_.push_back(Msg{id, run, {}});
    ++runs_sent_;
    return id;
  }
  absl::Status SendKvOp(const KvOpSpec& op) override {
    queue_.push_back(Msg{0, {}, op});
    return absl::OkStatus();
  }
  void Cancel(std::span<const uint64_t> ids) override {
    for (uint64_t id : ids) cancelled_.insert(id);
    cancels_ += ids.size();
  }

  bool HasPending() const { return !queue_.empty(); }
  bool HasOutcome() const { return !outcomes_.empty(); }
  Outcome PopOutcome() {
    Outcome o = std::move(outcomes_.front());
    outcomes_.pop_front();
    return o;
  }

  // Applies the next queued message, as every stage would, in order.
  void Step() {
    Msg m = std::move(queue_.front());
    queue_.pop_front();
    if (m.id == 0) {
      ApplyKv(m.op);
    } else {
      ApplyRun(m.id, m.run);
    }
  }

  size_t live_partitions() const { return parts_.size(); }
  uint64_t runs_sent() const { return runs_sent_; }
  uint64_t cancels() const { return cancels_; }
  uint64_t skipped() const { return skipped_; }

 private:
  struct Msg {
    uint64_t id = 0;
    RunSpec run;
    KvOpSpec op;
  };

  static void AppendLinear(Seq& seq, const Cell& c) {
    Cell n = c;
    n.parent = static_cast<int32_t>(seq.cells.size()) - 1;
    n.pos = static_cast<uint32_t>(seq.cells.size());
    n.branch = 0;
    seq.cells.push_back(n);
  }

  // The cells of path(seq, branch), in position order.
  static std::vector<Cell> PathOf(const Seq& seq, uint32_t branch) {
    int32_t last = -1;
    if (seq.written) {
      for (size_t i = seq.prefix; i < seq.cells.size(); ++i) {
        if (seq.cells[i].branch == branch) last = static_cast<int32_t>(i);
      }
    }
    if (last < 0) {
      EXPECT_EQ(branch, 0u) << "branch " << branch << " not in the partition";
      if (seq.written) {
        // A tombstoned run: every cell is poisoned anyway; take the linear prefix.
        return std::vector<Cell>(seq.cells.begin(), seq.cells.begin() + seq.prefix);
      }
      return seq.cells;
    }
    std::vector<Cell> path;
    for (int32_t i = last; i >= 0; i = seq.cells[i].parent) path.push_back(seq.cells[i]);
    std::reverse(path.begin(), path.end());
    return path;
  }

  void ApplyKv(const KvOpSpec& op) {
    if (op.kind == KvOpSpec::Kind::kCommit) {
      auto it = parts_.find(op.partition);
      ASSERT_NE(it, parts_.end()) << "commit of unknown partition " << op.partition;
      const std::vector<Cell> path = PathOf(it->second, op.branch);
      ASSERT_LE(op.n_positions, path.size());
      ASSERT_GE(op.n_positions, 1u);
      Seq c;
      for (uint32_t i = 0; i < op.n_positions; ++i) {
        ASSERT_FALSE(path[i].poisoned) << "commit adopts poisoned position " << i;
        AppendLinear(c, path[i]);
      }
      c.prefix = c.cells.size();
      canonical_ = std::move(c);
      if (op.release) parts_.erase(it);
    } else {
      for (uint32_t p : op.partitions) {
        ASSERT_EQ(parts_.erase(p), 1u) << "release of unknown partition " << p;
      }
    }
  }

  void ApplyRun(uint64_t id, const RunSpec& run) {
    Seq* seq = &canonical_;
    const bool extends = run.speculative && !run.fork.has_value();
    if (extends) {
      // A token tree grown over several runs: the partition exists and its roots name anchors.
      ASSERT_FALSE(run.anchors.empty()) << "speculative run without fork or anchors";
      ASSERT_EQ(parts_.count(run.partition), 1u) << "extension of unknown partition";
      seq = &parts_[run.partition];
    } else if (run.speculative) {
      ASSERT_NE(run.partition, 0u);
      ASSERT_TRUE(run.fork.has_value()) << "speculative run without fork";
      ASSERT_EQ(parts_.count(run.partition), 0u) << "fork into live partition " << run.partition;
      const Seq& src =
          run.fork->src_partition == 0 ? canonical_ : parts_.at(run.fork->src_partition);
      const std::vector<Cell> path = PathOf(src, run.fork->src_branch);
      ASSERT_LE(run.fork->n_positions, path.size());
      Seq fresh;
      for (uint32_t i = 0; i < run.fork->n_positions; ++i) AppendLinear(fresh, path[i]);
      fresh.prefix = fresh.cells.size();
      parts_[run.partition] = std::move(fresh);
      seq = &parts_[run.partition];
      ASSERT_FALSE(seq->written);
    } else {
      ASSERT_EQ(run.partition, 0u);
      ASSERT_TRUE(run.parents.empty());
      seq->prefix = seq->cells.size();
    }
    const size_t n = run.tokens.size();
    ASSERT_GT(n, 0u);
    ASSERT_EQ(run.positions.size(), n);
    ASSERT_TRUE(run.parents.empty() || run.parents.size() == n);
    ASSERT_TRUE(run.branches.empty() || run.branches.size() == n);
    ASSERT_TRUE(run.anchors.empty() || run.anchors.size() == n);
    bool skip =
        cancelled_.count(id) > 0 && std::uniform_real_distribution<double>(0, 1)(rng_) < p_skip_;
    std::string reason = "CANCELLED";
    if (!skip) {
      for (size_t i = 0; i < seq->prefix; ++i) {
        if (seq->cells[i].poisoned) {
          skip = true;
          reason = "DEPENDENCY";
          break;
        }
      }
    }
    const size_t base = seq->cells.size();
    const int32_t last_slot = static_cast<int32_t>(base) - 1;
    bool all_poisoned = true;
    for (size_t i = 0; i < n; ++i) {
      Cell c;
      c.token = run.tokens[i];
      const int32_t p = run.parents.empty() ? static_cast<int32_t>(i) - 1 : run.parents[i];
      ASSERT_LT(p, static_cast<int32_t>(i));
      if (p >= 0) {
        c.parent = static_cast<int32_t>(base) + p;
      } else if (!run.anchors.empty() && run.anchors[i] >= 0) {
        ASSERT_LT(run.anchors[i], static_cast<int32_t>(base)) << "anchor beyond the partition";
        c.parent = run.anchors[i];
      } else {
        c.parent = last_slot;
      }
      // Below a poisoned cell nothing is real (a tree partition keeps poison per cell).
      c.poisoned = skip || (c.parent >= 0 && seq->cells[c.parent].poisoned);
      all_poisoned = all_poisoned && c.poisoned;
      c.pos = c.parent < 0 ? 0 : seq->cells[c.parent].pos + 1;
      c.branch = run.branches.empty() ? 0 : run.branches[i];
      ASSERT_EQ(run.positions[i], c.pos) << "run " << id << " token " << i;
      seq->cells.push_back(c);
    }
    if (run.speculative) seq->written = true;
    if (!skip && !run.anchors.empty() && all_poisoned) {
      skip = true;
      reason = "DEPENDENCY";
    }
    Outcome o;
    o.run_id = id;
    if (skip) {
      ++skipped_;
      o.tombstone = true;
      o.tombstone_reason = reason;
    } else {
      size_t next_row = 0;
      for (size_t i = 0; i < n; ++i) {
        if (next_row < run.result_rows.size() && run.result_rows[next_row] == i) {
          std::vector<int32_t> path;
          for (int32_t k = static_cast<int32_t>(base + i); k >= 0; k = seq->cells[k].parent) {
            // A poisoned cell holds garbage: the row comes out wrong (token 0 in its place).
            path.push_back(seq->cells[k].poisoned ? 0 : seq->cells[k].token);
          }
          std::reverse(path.begin(), path.end());
          o.rows.push_back(target_(path));
          ++next_row;
        }
      }
      ASSERT_EQ(next_row, run.result_rows.size()) << "result rows not increasing";
    }
    outcomes_.push_back(std::move(o));
  }

  TargetFn target_;
  std::mt19937_64 rng_;
  double p_skip_;
  uint64_t next_id_ = 1;
  std::deque<Msg> queue_;
  std::deque<Outcome> outcomes_;
  std::set<uint64_t> cancelled_;
  Seq canonical_;
  std::map<uint32_t, Seq> parts_;
  uint64_t runs_sent_ = 0, cancels_ = 0, skipped_ = 0;
};

// A drafter whose logits are a function of the sequence.
class FakeDrafter : public Drafter {
 public:
  using Fn = std::function<std::vector<float>(const std::vector<int32_t>& seq)>;
  explicit FakeDrafter(Fn fn) : fn_(std::move(fn)) {}
  absl::StatusOr<std::span<const float>> NextLogits(std::span<const int32_t> seq) override {
    ++calls_;
    logits_ = fn_(std::vector<int32_t>(seq.begin(), seq.end()));
    return std::span<const float>(logits_);
  }
  uint64_t calls() const { return calls_; }

 private:
  Fn fn_;
  std::vector<float> logits_;
  uint64_t calls_ = 0;
};

// Drives a controller against a FakePipeline to the end, choosing at random (from `seed`) what
// happens next: a stage step, an outcome delivery, or a speculation attempt.
inline absl::Status Drive(Controller& c, FakePipeline& pipe, uint64_t seed) {
  std::mt19937_64 rng(seed);
  absl::StatusOr<int> s = c.Speculate([&] { return pipe.HasOutcome(); });
  if (!s.ok()) return s.status();
  int guard = 0;
  while (!c.finished()) {
    if (++guard > 200000) return absl::InternalError("no progress");
    const int choice = static_cast<int>(rng() % 3);
    if (choice == 0 && pipe.HasPending()) {
      pipe.Step();
      if (::testing::Test::HasFatalFailure()) return absl::InternalError("pipeline check failed");
    } else if (choice == 1 && pipe.HasOutcome()) {
      if (absl::Status st = c.OnOutcome(pipe.PopOutcome()); !st.ok()) return st;
    } else if (choice == 2) {
      s = c.Speculate([&] { return pipe.HasOutcome(); });
      if (!s.ok()) return s.status();
    } else if (!pipe.HasPending() && !pipe.HasOutcome()) {
      return absl::InternalError(
          absl::StrCat("stalled: nothing in flight after ", c.generated(), " tokens"));
    }
  }
  return absl::OkStatus();
}

}  // namespace pipeinfer::spec::testing
