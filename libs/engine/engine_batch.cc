// The forward pass itself, over a batch of runs (Engine::Batch): validation and KV slots per run at
// Add time, then one layer loop over the rows of every run still in the batch.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/engine.h"
#include "kernels/kernels.h"

namespace pipeinfer::engine {

absl::Status Engine::Batch::Add(const ForwardInput& in) {
  const StageModel& model = *e_.model_;
  const auto& hp = model.hparams();
  const int64_t n_embd = hp.n_embd;
  int32_t n = in.n_tokens;
  if (n == 0) {
    n = model.is_first() ? static_cast<int32_t>(in.tokens.size())
                         : static_cast<int32_t>(in.hidden.size() / n_embd);
  }
  if (n <= 0) return absl::InvalidArgumentError("a run needs at least one token");
  if (model.is_first()) {
    if (static_cast<int32_t>(in.tokens.size()) != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("first stage needs ", n, " token ids, got ", in.tokens.size()));
    }
    for (int32_t id : in.tokens) {
      if (id < 0 || id >= static_cast<int32_t>(hp.n_vocab)) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is outside the vocabulary of ", hp.n_vocab));
      }
    }
  } else if (static_cast<int64_t>(in.hidden.size()) != n * n_embd) {
    return absl::InvalidArgumentError(absl::StrCat("hidden input has ", in.hidden.size(),
                                                   " floats, expected ", n, " x ", n_embd));
  }
  if (!in.parents.empty() && static_cast<int32_t>(in.parents.size()) != n) {
    return absl::InvalidArgumentError("parents must have one entry per token");
  }
  if (!in.anchors.empty() && static_cast<int32_t>(in.anchors.size()) != n) {
    return absl::InvalidArgumentError("anchors must have one entry per token");
  }
  for (int32_t r : in.output_rows) {
    if (r < 0 || r >= n) return absl::InvalidArgumentError("output row outside the run");
  }
  for (const Item& it : items_) {
    if (it.in.session == in.session) {
      return absl::InvalidArgumentError(
          absl::StrCat("session ", in.session, " already has a run in this batch"));
    }
  }
  std::vector<int32_t> parents(in.parents.begin(), in.parents.end());
  if (parents.empty()) {
    parents.resize(n);
    for (int32_t i = 0; i < n; ++i) parents[i] = i - 1;
  }

  // Positions, checked against the context before anything is allocated.
  PI_ASSIGN_OR_RETURN(const kv::Sequence* before, e_.kv_->Get(in.session, in.partition));
  const int32_t root_pos = before->size() == 0 ? 0 : before->position.back() + 1;
  std::vector<int32_t> positions(n);
  for (int32_t i = 0; i < n; ++i) {
    if (parents[i] < -1 || parents[i] >= i) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", i, " has parent ", parents[i], " (must be -1 or earlier)"));
    }
    if (parents[i] >= 0) {
      positions[i] = positions[parents[i]] + 1;
    } else if (!in.anchors.empty() && in.anchors[i] >= 0) {
      if (in.anchors[i] >= before->size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("token ", i, " hangs off slot ", in.anchors[i], " of ", before->size()));
      }
      positions[i] = before->position[in.anchors[i]] + 1;
    } else {
      positions[i] = root_pos;
    }
    if (positions[i] >= e_.max_context_) {
      return absl::OutOfRangeError(
          absl::StrCat("position ", positions[i], " exceeds the context length ", e_.max_context_));
    }
  }
  PI_ASSIGN_OR_RETURN(std::vector<int32_t> slots,
                      e_.kv_->Append(in.session, in.partition, parents, in.anchors));
  Item item;
  item.in = in;
  item.in.n_tokens = n;
  item.seq = e_.kv_->Find(in.session, in.partition);
  item.slots = std::move(slots);
  item.positions = std::move(positions);
  items_.push_back(std::move(item));
  tokens_ += n;
  return absl::OkStatus();
}

PassRows Engine::Describe(const std::vector<const kv::Sequence*>& seqs,
                          const std::vector<int32_t>& slots,
                          const std::vector<int32_t>& positions) const {
  PassRows rows;
  rows.n = static_cast<int32_t>(slots.size());
  rows.position = positions;
  rows.kv_slot.resize(rows.n);
  rows.vis_offsets.assign(1, 0);
  for (int32_t r = 0; r < rows.n; ++r) {
    const kv::Sequence& seq = *seqs[r];
    rows.kv_slot[r] = kv_->PhysicalSlot(seq, slots[r]);
    // Keys visible to the token (its path): the same for every layer and head.
    const kv::Visibility vis = kv::KvCache::VisibilityOf(seq, slots[r]);
    for (int32_t s = 0; s < vis.linear_end; ++s)
      rows.vis_slots.push_back(kv_->PhysicalSlot(seq, s));
    for (int32_t s : vis.extra) rows.vis_slots.push_back(kv_->PhysicalSlot(seq, s));
    rows.vis_offsets.push_back(static_cast<int32_t>(rows.vis_slots.size()));
    rows.max_visible = std::max(rows.max_visible, rows.vis_offsets[r + 1] - rows.vis_offsets[r]);
  }
  return rows;
}

std::vector<ForwardOutput> Engine::Batch::Run(BatchStats* stats) {
  const int32_t n_items = static_cast<int32_t>(items_.size());
  std::vector<ForwardOutput> outs(n_items);
  for (int32_t i = 0; i < n_items; ++i) {
    outs[i].slots = items_[i].slots;
    outs[i].positions = items_[i].positions;
  }
  if (n_items == 0) return outs;
  if (absl::Status st = e_.RunPass(*this, outs, stats); !st.ok()) {
    for (ForwardOutput& o : outs) {
      o.hidden.clear();
      o.logits.clear();
      o.error = st;
    }
  }
  return outs;
}

absl::Status Engine::RunPass(Batch& batch, std::vector<ForwardOutput>& outs, BatchStats* stats) {
  const std::vector<Batch::Item>& items = batch.items_;
  const StageModel& model = *model_;
  const auto& hp = model.hparams();
  const int64_t n_embd = hp.n_embd;
  const int32_t n_items = static_cast<int32_t>(items.size());

  // The rows of the runs still in the batch, run after run. `active` holds item indices.
  std::vector<int32_t> active(n_items);
  for (int32_t i = 0; i < n_items; ++i) active[i] = i;
  std::vector<int32_t> row_item, row_slot, row_pos;
  std::vector<const kv::Sequence*> row_seq;
  std::vector<float> x;
  for (int32_t i : active) {
    const Batch::Item& it = items[i];
    for (int32_t t = 0; t < it.in.n_tokens; ++t) {
      row_item.push_back(i);
      row_slot.push_back(it.slots[t]);
      row_pos.push_back(it.positions[t]);
      row_seq.push_back(it.seq);
    }
    const size_t base = x.size();
    x.resize(base + static_cast<size_t>(it.in.n_tokens) * n_embd);
    if (model.is_first()) {
      for (int32_t t = 0; t < it.in.n_tokens; ++t) {
        kernels::DequantizeRow(model.token_embd(), it.in.tokens[t], x.data() + base + t * n_embd);
      }
    } else {
      std::copy(it.in.hidden.begin(), it.in.hidden.end(), x.begin() + base);
    }
  }
  PassRows rows = Describe(row_seq, row_slot, row_pos);
  for (auto& shard : shards_) PI_RETURN_IF_ERROR(shard->Begin(rows, x));

  // Drops the rows of the items for which `leave` is true (cancelled runs leave the batch).
  auto shrink = [&](const std::vector<bool>& leave) -> absl::Status {
    std::vector<int32_t> keep;
    for (size_t r = 0; r < row_item.size(); ++r) {
      if (leave[row_item[r]]) continue;
      const size_t w = keep.size();
      keep.push_back(static_cast<int32_t>(r));
      row_item[w] = row_item[r];
      row_slot[w] = row_slot[r];
      row_pos[w] = row_pos[r];
      row_seq[w] = row_seq[r];
    }
    const size_t w = keep.size();
    row_item.resize(w);
    row_slot.resize(w);
    row_pos.resize(w);
    row_seq.resize(w);
    std::erase_if(active, [&](int32_t i) { return leave[i]; });
    rows = Describe(row_seq, row_slot, row_pos);
    for (auto& shard : shards_) PI_RETURN_IF_ERROR(shard->Keep(keep, rows));
    return absl::OkStatus();
  };

  const bool split = shards_.size() > 1;
  for (int32_t l = 0; l < model.n_layers(); ++l) {
    std::vector<bool> leave(n_items, false);
    bool any = false;
    for (int32_t i : active) {
      const ForwardInput& in = items[i].in;
      if (in.cancelled && in.cancelled()) {
        leave[i] = any = true;
        outs[i].stopped = true;
        outs[i].layers_done = l;
      }
    }
    if (any) PI_RETURN_IF_ERROR(shrink(leave));
    const int32_t n = static_cast<int32_t>(row_item.size());
    if (n == 0) break;
    if (stats) stats->rows_per_layer.push_back(n);
    for (auto& shard : shards_) PI_RETURN_IF_ERROR(shard->AttentionPartial(l));
    if (split) PI_RETURN_IF_ERROR(all_reduce_->Sum(shard_ptrs_, n * n_embd));
    for (auto& shard : shards_) PI_RETURN_IF_ERROR(shard->AddPartial());
    for (auto& shard : shards_) PI_RETURN_IF_ERROR(shard->FfnPartial(l));
    if (split) PI_RETURN_IF_ERROR(all_reduce_->Sum(shard_ptrs_, n * n_embd));
    for (auto& shard : shards_) PI_RETURN_IF_ERROR(shard->AddPartial());
  }

  // Runs still in the batch completed every layer; hand each its rows.
  std::vector<int32_t> first_row(n_items, -1);
  for (size_t r = 0; r < row_item.size(); ++r) {
    if (first_row[row_item[r]] < 0) first_row[row_item[r]] = static_cast<int32_t>(r);
  }
  for (int32_t i : active) outs[i].layers_done = model.n_layers();
  if (!model.is_last()) {
    x.resize(row_item.size() * n_embd);
    PI_RETURN_IF_ERROR(shards_[0]->ReadHidden(x));
    for (int32_t i : active) {
      const auto begin = x.begin() + static_cast<int64_t>(first_row[i]) * n_embd;
      outs[i].hidden.assign(begin, begin + static_cast<int64_t>(items[i].in.n_tokens) * n_embd);
    }
    return absl::OkStatus();
  }
  // The output head once for the requested rows of every run.
  std::vector<int32_t> which;
  for (int32_t i : active) {
    for (int32_t r : items[i].in.output_rows) which.push_back(first_row[i] + r);
  }
  const int64_t n_vocab = hp.n_vocab;
  std::vector<float> logits(which.size() * n_vocab);
  PI_RETURN_IF_ERROR(shards_[0]->Head(which, logits));
  int64_t o = 0;
  for (int32_t i : active) {
    const int64_t n_rows = static_cast<int64_t>(items[i].in.output_rows.size());
    outs[i].logits.assign(logits.begin() + o * n_vocab, logits.begin() + (o + n_rows) * n_vocab);
    o += n_rows;
  }
  return absl::OkStatus();
}

}  // namespace pipeinfer::engine
