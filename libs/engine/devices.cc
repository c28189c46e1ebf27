#include "engine/devices.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace pipeinfer::engine {

absl::StatusOr<DeviceList> ParseDevices(const std::string& text) {
  DeviceList out;
  bool any_cpu = false;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    item = absl::StripAsciiWhitespace(item);
    const absl::string_view whole = item;
    if (item == "cpu") {
      any_cpu = true;
      out.ordinals.push_back(0);
      continue;
    }
    int ordinal = 0;
    if (item == "cuda") {
      ordinal = 0;
    } else if (absl::ConsumePrefix(&item, "cuda:") && absl::SimpleAtoi(item, &ordinal) &&
               ordinal >= 0) {
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown device '", whole, "' (expected cpu, cuda or cuda:N, e.g. --device cuda:0)"));
    }
    for (int o : out.ordinals) {
      if (out.cuda && o == ordinal) {
        return absl::InvalidArgumentError(absl::StrCat("device cuda:", ordinal, " listed twice"));
      }
    }
    out.cuda = true;
    out.ordinals.push_back(ordinal);
  }
  if (out.ordinals.empty()) return absl::InvalidArgumentError("no device given");
  if (any_cpu && out.cuda) {
    return absl::InvalidArgumentError(absl::StrCat(
        "devices '", text, "' mix cpu and cuda: one stage splits over devices of one kind"));
  }
  return out;
}

}  // namespace pipeinfer::engine
