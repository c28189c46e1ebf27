// Python string semantics for the Jinja-subset interpreter (internal to libs/chat): whitespace,
// case mapping (ASCII letters; other characters unchanged), strip.
#pragma once

#include <string>
#include <string_view>

#include "chat/jinja_value.h"

namespace pipeinfer::chat::jinja {

std::string Lower(std::string_view s);
std::string Upper(std::string_view s);
// Python's s.strip(chars) / lstrip / rstrip: `chars` null = Unicode whitespace, else the set of
// characters of *chars.
std::string Strip(std::string_view s, const std::string* chars, bool left, bool right);
// The same for a string value, keeping its marks on the remaining text.
Value StripValue(const Value& v, const std::string* chars, bool left, bool right);

}  // namespace pipeinfer::chat::jinja
