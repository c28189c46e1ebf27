// Dumps llama.cpp's logits for a prompt given as token ids, in the shared fixtures' formats:
// PREFIX.prompt_logits.f32 ([n_prompt][n_vocab], one batched decode), PREFIX.greedy_ids.txt and
// PREFIX.greedy_logits.f32 (32 single-token greedy steps, pure argmax). 1 thread, n_ctx 512,
// default context parameters otherwise (F16 KV cache).
//   dump_logits MODEL.gguf "1 2 3" PREFIX [flash_attn: auto|on|off]
//
// Not part of the build (the project never depends on llama.cpp). Build against a llama.cpp tree
// built with CMake (static libraries), e.g. LL=build-llamacpp:
//   g++ -O2 -std=c++17 dump_logits.cc -I$LL/src/include -I$LL/src/ggml/include -o dump_logits \
//     $LL/build-cpu/src/libllama.a $LL/build-cpu/ggml/src/libggml.a \
//     $LL/build-cpu/ggml/src/libggml-cpu.a $LL/build-cpu/ggml/src/libggml-base.a -fopenmp -ldl
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "llama.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL IDS PREFIX [auto|on|off]\n", argv[0]);
    return 2;
  }
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  llama_model* model = llama_model_load_from_file(argv[1], mp);
  if (model == nullptr) return 1;
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 512;
  cp.n_batch = 512;
  cp.n_ubatch = 512;
  cp.n_threads = 1;
  cp.n_threads_batch = 1;
  if (argc > 4) {
    const std::string fa = argv[4];
    cp.flash_attn_type = fa == "on"    ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                         : fa == "off" ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                                       : LLAMA_FLASH_ATTN_TYPE_AUTO;
  }
  llama_context* ctx = llama_init_from_model(model, cp);
  if (ctx == nullptr) return 1;
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  std::vector<llama_token> ids;
  std::istringstream in(argv[2]);
  for (int v; in >> v;) ids.push_back(v);
  const std::string prefix = argv[3];

  llama_batch batch = llama_batch_init(512, 0, 1);
  batch.n_tokens = static_cast<int>(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    batch.token[i] = ids[i];
    batch.pos[i] = static_cast<llama_pos>(i);
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = 0;
    batch.logits[i] = 1;
  }
  if (llama_decode(ctx, batch) != 0) return 1;
  FILE* f = std::fopen((prefix + ".prompt_logits.f32").c_str(), "wb");
  for (size_t i = 0; i < ids.size(); ++i) {
    std::fwrite(llama_get_logits_ith(ctx, static_cast<int>(i)), 4, n_vocab, f);
  }
  std::fclose(f);
  auto argmax = [&](const float* l) {
    int best = 0;
    for (int v = 1; v < n_vocab; ++v)
      if (l[v] > l[best]) best = v;
    return best;
  };
  int next = argmax(llama_get_logits_ith(ctx, static_cast<int>(ids.size()) - 1));
  FILE* g = std::fopen((prefix + ".greedy_logits.f32").c_str(), "wb");
  std::string greedy;
  for (int s = 0; s < 32; ++s) {
    greedy += (s ? " " : "") + std::to_string(next);
    batch.n_tokens = 1;
    batch.token[0] = next;
    batch.pos[0] = static_cast<llama_pos>(ids.size() + s);
    batch.n_seq_id[0] = 1;
    batch.seq_id[0][0] = 0;
    batch.logits[0] = 1;
    if (llama_decode(ctx, batch) != 0) return 1;
    const float* l = llama_get_logits_ith(ctx, 0);
    std::fwrite(l, 4, n_vocab, g);
    next = argmax(l);
  }
  std::fclose(g);
  FILE* h = std::fopen((prefix + ".greedy_ids.txt").c_str(), "w");
  std::fprintf(h, "%s\n", greedy.c_str());
  std::fclose(h);
  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}
