#include "tokenizer/utf8.h"

namespace pipeinfer::tokenizer {

Utf8Scan ScanUtf8(std::string_view s) {
  const auto b0 = static_cast<uint8_t>(s[0]);
  if (b0 < 0x80) return {Utf8Step::kValid, 1};
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlongs
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;  // no overlongs
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return {Utf8Step::kInvalid, 1};  // continuation byte, C0/C1, F5..FF
  }
  for (size_t i = 1; i < need; ++i) {
    if (i >= s.size()) return {Utf8Step::kIncomplete, i};
    const auto b = static_cast<uint8_t>(s[i]);
    const uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) return {Utf8Step::kInvalid, i};
  }
  return {Utf8Step::kValid, need};
}

bool IsValidUtf8(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    const Utf8Scan r = ScanUtf8(s.substr(pos));
    if (r.step != Utf8Step::kValid) return false;
    pos += r.length;
  }
  return true;
}

void DrainUtf8(std::string* pending, bool final, std::string* out) {
  const std::string_view s = *pending;
  size_t pos = 0;
  while (pos < s.size()) {
    const Utf8Scan r = ScanUtf8(s.substr(pos));
    if (r.step == Utf8Step::kValid) {
      out->append(s.substr(pos, r.length));
      pos += r.length;
    } else if (r.step == Utf8Step::kInvalid) {
      out->append(kReplacementChar);
      pos += r.length;
    } else {  // incomplete: only possible at the end
      if (!final) break;
      out->append(kReplacementChar);
      pos = s.size();
    }
  }
  pending->erase(0, pos);
}

}  // namespace pipeinfer::tokenizer
