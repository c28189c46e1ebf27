#include "gguf/architectures.h"

#include "absl/strings/str_cat.h"

namespace pipeinfer::gguf {
namespace {

constexpr bool kLayer = true, kGlobal = false;
constexpr bool kRequired = true, kOptional = false;
using enum Dim;

// clang-format off
// Tensors every member of the llama family has, in file order.
std::vector<TensorDef> LlamaCore() {
  return {
    // name                   where     need       shape (GGUF order: row length first)
    {"token_embd.weight",     kGlobal,  kRequired, {kEmbd, kVocab}},
    {"attn_norm.weight",      kLayer,   kRequired, {kEmbd}},
    {"attn_q.weight",         kLayer,   kRequired, {kEmbd, kQ}},
    {"attn_k.weight",         kLayer,   kRequired, {kEmbd, kKv}},
    {"attn_v.weight",         kLayer,   kRequired, {kEmbd, kKv}},
    {"attn_output.weight",    kLayer,   kRequired, {kQ, kEmbd}},
    {"ffn_norm.weight",       kLayer,   kRequired, {kEmbd}},
    {"ffn_gate.weight",       kLayer,   kRequired, {kEmbd, kFf}},
    {"ffn_up.weight",         kLayer,   kRequired, {kEmbd, kFf}},
    {"ffn_down.weight",       kLayer,   kRequired, {kFf, kEmbd}},
    {"output_norm.weight",    kGlobal,  kRequired, {kEmbd}},
    {"output.weight",         kGlobal,  kOptional, {kEmbd, kVocab}},  // absent: tied to token_embd
  };
}

std::vector<TensorDef> With(std::vector<TensorDef> base, const std::vector<TensorDef>& more) {
  base.insert(base.end(), more.begin(), more.end());
  return base;
}

std::vector<ArchDef> MakeTable() {
  return {
    {Arch::kLlama, "llama", RopeStyle::kNormal, With(LlamaCore(), {
      {"attn_q.bias",         kLayer,   kOptional, {kQ}},
      {"attn_k.bias",         kLayer,   kOptional, {kKv}},
      {"attn_v.bias",         kLayer,   kOptional, {kKv}},
      {"rope_freqs.weight",   kGlobal,  kOptional, {kRopeHalf}},  // Llama-3.1 frequency divisors
    })},
    {Arch::kQwen2, "qwen2", RopeStyle::kNeox, With(LlamaCore(), {
      {"attn_q.bias",         kLayer,   kRequired, {kQ}},
      {"attn_k.bias",         kLayer,   kRequired, {kKv}},
      {"attn_v.bias",         kLayer,   kRequired, {kKv}},
    })},
    {Arch::kQwen3, "qwen3", RopeStyle::kNeox, With(LlamaCore(), {
      {"attn_q_norm.weight",  kLayer,   kRequired, {kHeadDim}},
      {"attn_k_norm.weight",  kLayer,   kRequired, {kHeadDim}},
    })},
  };
}
// clang-format on

}  // namespace

const std::vector<ArchDef>& Architectures() {
  static const std::vector<ArchDef>* const table = new std::vector<ArchDef>(MakeTable());
  return *table;
}

const ArchDef* FindArchitecture(std::string_view name) {
  for (const ArchDef& a : Architectures()) {
    if (name == a.name) return &a;
  }
  return nullptr;
}

const ArchDef& ArchitectureOf(Arch arch) {
  for (const ArchDef& a : Architectures()) {
    if (a.arch == arch) return a;
  }
  return Architectures().front();  // unreachable: every Arch has a row
}

std::string SupportedArchitectureNames() {
  std::string out;
  for (const ArchDef& a : Architectures()) absl::StrAppend(&out, out.empty() ? "" : ", ", a.name);
  return out;
}

uint64_t TensorDims::Of(Dim d) const {
  switch (d) {
    case kEmbd:
      return embd;
    case kVocab:
      return vocab;
    case kFf:
      return ff;
    case kQ:
      return q;
    case kKv:
      return kv;
    case kHeadDim:
      return head_dim;
    case kRopeHalf:
      return rope_half;
  }
  return 0;
}

std::vector<uint64_t> ResolveShape(const TensorDef& def, const TensorDims& dims) {
  std::vector<uint64_t> out;
  out.reserve(def.shape.size());
  for (Dim d : def.shape) out.push_back(dims.Of(d));
  return out;
}

std::string TensorName(const TensorDef& def, uint32_t layer) {
  return def.per_layer ? absl::StrCat("blk.", layer, ".", def.name) : std::string(def.name);
}

}  // namespace pipeinfer::gguf
