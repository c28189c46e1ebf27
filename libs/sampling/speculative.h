// Lossless verification of speculative (draft) tokens: pure functions over the target
// distribution p (Filter() of the target model's logits at a position) and the draft distribution
// q (Filter() of the draft model's logits at the same position, the distribution the draft tokens
// were actually drawn from). Whatever q is, the token these functions emit is distributed exactly
// as p; q only changes how often a draft token is kept.
//
// Single draft token (Leviathan et al. 2023; Chen et al. 2023). x ~ q. Draw u ~ U[0, 1); accept x
// when u < p(x) / q(x) (always when p(x) >= q(x)). On rejection, emit a token drawn from the
// residual r = max(0, p - q) / sum(max(0, p - q)). Proof: P(emit y) = q(y) min(1, p(y)/q(y)) +
// P(reject) r(y) = min(p(y), q(y)) + (1 - sum_z min(p(z), q(z))) r(y) = p(y), because
// 1 - sum min(p, q) = sum max(0, p - q).
//
// Several sibling candidates (a token tree: k children of one node), "recursive rejection
// sampling" with candidates drafted WITHOUT replacement from q (as DraftCandidates does: x_1 ~ q,
// x_2 ~ q with x_1 removed and renormalized, ...). Start with p_1 = p, q_1 = q. For i = 1..k:
//   accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); if accepted emit it and stop;
//   otherwise p_{i+1} = norm(max(0, p_i - q_i)) and q_{i+1} = q_i with x_i removed, renormalized.
// If all k are rejected, emit a token drawn from p_{k+1}.
// Why the output is distributed as p: by induction backwards over i, conditional on the history
// H_{i-1} = (x_1..x_{i-1} all rejected), the emitted token is distributed as p_i. Given H_{i-1},
// x_i is distributed as q_i (that is what drafting without replacement means) and p_i, q_i, p_{i+1}
// depend on H_{i-1} only, not on x_i. So step i is exactly one single-token step with target p_i
// and draft q_i whose "sample from the residual" is replaced by "continue", and continuing emits a
// token distributed as p_{i+1} = that residual whatever x_i was (induction hypothesis; the base
// case samples p_{k+1} directly). By the single-token proof the output given H_{i-1} is p_i; at
// i = 1 that is p. Drafting without replacement is chosen because duplicate siblings in a tree
// are wasted compute (the i.i.d. variant, which keeps q fixed, would need duplicates allowed).
//
// Requirements for losslessness: for a sampled target (temperature > 0) the candidates must be
// random draws from q as described (NOT the deterministic top-k of q), and q must be the exact
// distribution they were drawn from. For a greedy target (p is one-hot) any candidates work: the
// argmax is accepted if present, else it is emitted as the replacement.
// Robustness: a candidate with q_i(x) = 0 (impossible under the rules above, e.g. a duplicate)
// ends verification with a token drawn from p_i, which keeps the output distributed as p; a
// residual with no mass (p_i == q_i up to rounding) also falls back to p_i.
//
// RNG use is fixed: one Uniform() per examined candidate, plus one when a replacement is drawn.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "sampling/sampling.h"

namespace pipeinfer::sampling {

struct AcceptResult {
  bool accepted = false;
  int32_t token = -1;  // the draft token when accepted, else the replacement (-1 only if p empty)
};

AcceptResult AcceptDraftToken(const SparseDist& p, const SparseDist& q, int32_t draft_token,
                              Rng& rng);

struct CandidatesResult {
  int32_t accepted_index = -1;  // index into the candidates; -1 when every one was rejected
  int32_t token = -1;           // candidates[accepted_index], or the replacement
};

// Recursive rejection sampling over sibling candidates drafted from q without replacement, tried in
// their order. An empty `candidates` just samples p.
CandidatesResult AcceptDraftCandidates(const SparseDist& p, const SparseDist& q,
                                       std::span<const int32_t> candidates, Rng& rng);

// Draws up to k distinct tokens from q without replacement (successive sampling, one Uniform() per
// token): the drafting scheme AcceptDraftCandidates assumes. Fewer than k when q's support is
// smaller.
std::vector<int32_t> DraftCandidates(const SparseDist& q, int32_t k, Rng& rng);

}  // namespace pipeinfer::sampling
