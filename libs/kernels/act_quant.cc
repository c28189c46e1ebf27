// The activation quantizer setting of the integer MatMul path (act_quant.h).
#include "kernels/act_quant.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace pipeinfer::kernels {
namespace {

ActQuantScheme InitialScheme() {
  const char* env = std::getenv("PIPEINFER_ACT_QUANT");
  if (env == nullptr || *env == '\0') return ActQuantScheme::kLlamaCpp2023;
  if (const auto s = ParseActQuantScheme(env)) return *s;
  std::fprintf(stderr,
               "PIPEINFER_ACT_QUANT=%s is not llamacpp-2023 or llamacpp-2024; using "
               "llamacpp-2023\n",
               env);
  return ActQuantScheme::kLlamaCpp2023;
}

std::atomic<ActQuantScheme>& Setting() {
  static std::atomic<ActQuantScheme> scheme{InitialScheme()};
  return scheme;
}

}  // namespace

void SetActQuantScheme(ActQuantScheme scheme) {
  Setting().store(scheme, std::memory_order_relaxed);
}

ActQuantScheme GetActQuantScheme() { return Setting().load(std::memory_order_relaxed); }

const char* ActQuantSchemeName(ActQuantScheme scheme) {
  return scheme == ActQuantScheme::kLlamaCpp2024 ? "llamacpp-2024" : "llamacpp-2023";
}

std::optional<ActQuantScheme> ParseActQuantScheme(std::string_view name) {
  if (name == "llamacpp-2023") return ActQuantScheme::kLlamaCpp2023;
  if (name == "llamacpp-2024") return ActQuantScheme::kLlamaCpp2024;
  return std::nullopt;
}

}  // namespace pipeinfer::kernels
