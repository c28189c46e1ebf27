// llama_model_quantize through libllama (what llama-quantize calls), for fixture copies:
//   quantize IN.gguf OUT.gguf FTYPE_NUMBER [pure] [requant]
// FTYPE_NUMBER is a llama_ftype (0 F32: with `requant`, a copy with every tensor dequantized
// exactly; 3 Q4_1, 8 Q5_0, 9 Q5_1, 10 Q2_K, 11 Q3_K_S, 12 Q3_K_M, 16 Q5_K_S); `pure` gives every
// 2-D tensor that type. Not part of the build; compile like dump_logits.cc.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "llama.h"

int main(int argc, char** argv) {
  if (argc < 4) return 2;
  llama_backend_init();
  llama_model_quantize_params p = llama_model_quantize_default_params();
  p.nthread = 1;
  p.ftype = static_cast<llama_ftype>(std::atoi(argv[3]));
  for (int i = 4; i < argc; ++i) {
    if (std::strcmp(argv[i], "pure") == 0) p.pure = true;
    if (std::strcmp(argv[i], "requant") == 0) p.allow_requantize = true;
  }
  const uint32_t rc = llama_model_quantize(argv[1], argv[2], &p);
  std::printf("rc %u\n", rc);
  return rc == 0 ? 0 : 1;
}
