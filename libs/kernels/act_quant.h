// The activation quantizer of the integer ("fast") MatMul path, as one llama.cpp generation or the
// other does it. The two differ only in rounding details, but a model compared with llama.cpp
// matches it closely only with the same quantizer (the rounding noise of the activations is
// otherwise independent on both sides):
//
//   kLlamaCpp2023 (the default): llama.cpp up to early 2024, e.g. 9656026 (2023-11), which made the
//     shared T1 fixtures (tests/fixtures/README.md §1). Q8_K scale iscale = -128 / max (the
//     largest magnitude becomes -128); Q8_1 keeps d and s = d * sum(q) in float32.
//   kLlamaCpp2024: llama.cpp since early 2024 (e.g. de3ff815, 0.5.0): iscale = -127 / max (quants
//     in [-127, 127]); Q8_1 stores d and s as f16.
// Q8_0 (Q4_0/Q5_0/Q8_0 weights) is the same in both. Process-wide; the initial value comes from
// the environment variable PIPEINFER_ACT_QUANT (`llamacpp-2023` or `llamacpp-2024`).
#pragma once

#include <optional>
#include <string_view>

namespace pipeinfer::kernels {

enum class ActQuantScheme { kLlamaCpp2023, kLlamaCpp2024 };
void SetActQuantScheme(ActQuantScheme scheme);
ActQuantScheme GetActQuantScheme();
const char* ActQuantSchemeName(ActQuantScheme scheme);  // "llamacpp-2023", "llamacpp-2024"
std::optional<ActQuantScheme> ParseActQuantScheme(std::string_view name);

}  // namespace pipeinfer::kernels
