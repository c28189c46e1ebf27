#include "gguf/inspect.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gguf/llama.h"

namespace pipeinfer::gguf {

std::string InspectReport(const GgufFile& f, const InspectOptions& opts) {
  std::string out;
  absl::StrAppend(&out, "file: ", f.name(), "\n");
  absl::StrAppend(&out, "GGUF v", f.version(), ", alignment ", f.alignment(), ", ",
                  f.metadata().size(), " metadata keys, ", f.tensors().size(),
                  " tensors, data offset ", f.data_offset(), ", file size ", f.file_size(), "\n");

  absl::StrAppend(&out, "\nmetadata:\n");
  size_t key_width = 0;
  for (const auto& [k, v] : f.metadata()) key_width = std::max(key_width, k.size());
  for (const auto& [k, v] : f.metadata()) {
    absl::StrAppend(&out, absl::StrFormat("  %-*s  %-7s  %s\n", static_cast<int>(key_width), k,
                                          *ValueTypeName(static_cast<uint32_t>(v.type())),
                                          v.ToString(opts.max_array_items)));
  }

  auto hp = LlamaHParams::FromGguf(f);
  absl::StrAppend(&out, "\nhyperparameters:\n");
  if (hp.ok()) {
    absl::StrAppend(
        &out, absl::StrFormat("  architecture %s\n  n_vocab %u\n  n_ctx_train %u\n  n_embd %u\n"
                              "  n_layer %u\n  n_ff %u\n  n_head %u\n  n_head_kv %u\n"
                              "  head_dim %u\n  n_rot %u\n  rope_freq_base %g\n"
                              "  rope_freq_scale %g\n  rms_norm_eps %g\n  file_type %d\n",
                              hp->architecture, hp->n_vocab, hp->n_ctx_train, hp->n_embd,
                              hp->n_layer, hp->n_ff, hp->n_head, hp->n_head_kv, hp->head_dim(),
                              hp->n_rot, hp->rope_freq_base, hp->rope_freq_scale, hp->rms_norm_eps,
                              static_cast<int>(hp->file_type)));
    absl::StrAppend(&out, "  rope_style ",
                    hp->rope_style == RopeStyle::kNeox ? "neox (pairs i, i+n_rot/2)"
                                                       : "normal (consecutive pairs)",
                    "\n", "  rope_scaling ",
                    hp->rope_scaling == RopeScaling::kLlama3   ? "llama3"
                    : hp->rope_scaling == RopeScaling::kLinear ? "linear"
                                                               : "none",
                    "\n");
    StageSpec all{0, hp->n_layer, true, true};
    auto st = SelectStageTensors(f, *hp, all);
    absl::StrAppend(&out, "  tensors: ",
                    st.ok() ? absl::StrCat("complete (", st->total_bytes(), " bytes of weights",
                                           st->output == st->token_embd ? ", tied output" : "", ")")
                            : std::string(st.status().message()),
                    "\n");
  } else {
    absl::StrAppend(&out, "  (not a complete llama model: ", hp.status().message(), ")\n");
  }

  auto tok = TokenizerMetadata::FromGguf(f);
  absl::StrAppend(&out, "\ntokenizer:\n");
  if (tok.ok()) {
    absl::StrAppend(
        &out, absl::StrFormat("  model %s, %u tokens, bos %d, eos %d, unk %d, pad %d, "
                              "add_bos %s, add_eos %s, chat_template %s\n",
                              tok->model, tok->tokens.size(), tok->bos_id, tok->eos_id, tok->unk_id,
                              tok->pad_id, tok->add_bos ? "yes" : "no", tok->add_eos ? "yes" : "no",
                              tok->chat_template ? "yes" : "no"));
  } else {
    absl::StrAppend(&out, "  (", tok.status().message(), ")\n");
  }

  absl::StrAppend(&out, "\ntensors:\n");
  size_t name_width = 4;
  for (const auto& t : f.tensors()) name_width = std::max(name_width, t.name.size());
  absl::StrAppend(&out,
                  absl::StrFormat("  %-*s  %-5s  %-14s  %12s  %12s\n", static_cast<int>(name_width),
                                  "name", "type", "shape", "bytes", "offset"));
  uint64_t total = 0;
  for (const auto& t : f.tensors()) {
    absl::StrAppend(
        &out,
        absl::StrFormat("  %-*s  %-5s  %-14s  %12u  %12u\n", static_cast<int>(name_width), t.name,
                        TypeInfo(t.type).name, t.ShapeString(), t.n_bytes, t.file_offset));
    total += t.n_bytes;
  }
  absl::StrAppend(&out, "  total ", total, " bytes in ", f.tensors().size(), " tensors\n");
  return out;
}

}  // namespace pipeinfer::gguf
