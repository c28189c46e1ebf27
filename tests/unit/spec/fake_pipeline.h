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
  const std::vector<Cell>& canonical() const { return canonical_; }

 private:
  struct Msg {
    uint64_t id = 0;
    RunSpec run;
    KvOpSpec op;
  };

  void ApplyKv(const KvOpSpec& op) {
    if (op.kind == KvOpSpec::Kind::kCommit) {
      auto it = parts_.find(op.partition);
      ASSERT_NE(it, parts_.end()) << "commit of unknown partition " << op.partition;
      ASSERT_LE(op.n_positions, it->second.size());
      ASSERT_GE(op.n_positions, 1u);
      for (uint32_t i = 0; i < op.n_positions; ++i) {
        ASSERT_FALSE(it->second[i].poisoned) << "commit adopts poisoned position " << i;
      }
      canonical_.assign(it->second.begin(), it->second.begin() + op.n_positions);
      if (op.release) parts_.erase(it);
    } else {
      for (uint32_t p : op.partitions) {
        ASSERT_EQ(parts_.erase(p), 1u) << "release of unknown partition " << p;
      }
    }
  }

  void ApplyRun(uint64_t id, const RunSpec& run) {
    std::vector<Cell>* seq = &canonical_;
    if (run.speculative) {
      ASSERT_NE(run.partition, 0u);
      ASSERT_TRUE(run.fork.has_value()) << "speculative run without fork";
      ASSERT_EQ(parts_.count(run.partition), 0u) << "fork into live partition " << run.partition;
      const std::vector<Cell>& src =
          run.fork->src_partition == 0 ? canonical_ : parts_.at(run.fork->src_partition);
      ASSERT_LE(run.fork->n_positions, src.size());
      parts_[run.partition].assign(src.begin(), src.begin() + run.fork->n_positions);
      seq = &parts_[run.partition];
    } else {
      ASSERT_EQ(run.partition, 0u);
    }
    ASSERT_FALSE(run.tokens.empty());
    ASSERT_EQ(run.positions.size(), run.tokens.size());
    for (size_t i = 0; i < run.tokens.size(); ++i) {
      ASSERT_EQ(run.positions[i], seq->size() + i) << "run " << id << " token " << i;
    }
    bool skip =
        cancelled_.count(id) > 0 && std::uniform_real_distribution<double>(0, 1)(rng_) < p_skip_;
    std::string reason = "CANCELLED";
    if (!skip) {
      for (const Cell& c : *seq) {
        if (c.poisoned) {
          skip = true;
          reason = "DEPENDENCY";
          break;
        }
      }
    }
    Outcome o;
    o.run_id = id;
    if (skip) {
      ++skipped_;
      for (int32_t t : run.tokens) seq->push_back(Cell{t, true});
      o.tombstone = true;
      o.tombstone_reason = reason;
    } else {
      ASSERT_EQ(cancelled_.count(id) == 0 || true, true);
      std::vector<int32_t> path;
      for (const Cell& c : *seq) path.push_back(c.token);
      size_t next_row = 0;
      for (size_t i = 0; i < run.tokens.size(); ++i) {
        seq->push_back(Cell{run.tokens[i], false});
        path.push_back(run.tokens[i]);
        if (next_row < run.result_rows.size() && run.result_rows[next_row] == i) {
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
  std::vector<Cell> canonical_;
  std::map<uint32_t, std::vector<Cell>> parts_;
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
