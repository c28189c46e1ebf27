#include "chat/jinja_value.h"

#include <charconv>
#include <cmath>
#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pipeinfer::chat::jinja {

const Value* Value::Find(std::string_view key) const {
  if (!is_mapping() || !dict) return nullptr;
  for (const auto& [k, v] : *dict) {
    if (k == key) return &v;
  }
  return nullptr;
}

void Value::Set(const std::string& key, Value v) {
  if (!dict) dict = std::make_shared<Dict>();
  for (auto& [k, old] : *dict) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  dict->emplace_back(key, std::move(v));
}

std::string_view KindName(Kind k) {
  switch (k) {
    case Kind::kUndefined:
      return "undefined";
    case Kind::kNone:
      return "none";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "string";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kNamespace:
      return "namespace";
    case Kind::kCallable:
      return "callable";
  }
  return "?";
}

bool Truthy(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return v.b;
    case Kind::kInt:
      return v.i != 0;
    case Kind::kFloat:
      return v.f != 0;
    case Kind::kString:
      return !v.s.empty();
    case Kind::kList:
      return !v.list->empty();
    case Kind::kDict:
      return !v.dict->empty();
    case Kind::kNamespace:
    case Kind::kCallable:
      return true;
  }
  return false;
}

std::string FloatRepr(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f < 0 ? "-inf" : "inf";
  // Shortest round-trip digits in scientific form, then Python's choice of notation: positional
  // for decimal exponents -4 <= e < 16, scientific ("1e+16", "1.5e-05") otherwise.
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), f, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  const size_t e_pos = sci.find('e');
  std::string mant = sci.substr(0, e_pos);
  const int exp = std::stoi(sci.substr(e_pos + 1));
  const bool neg = !mant.empty() && mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant) {
    if (c != '.') digits += c;
  }
  std::string out = neg ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out += "0." + std::string(-exp - 1, '0') + digits;
    } else if (static_cast<size_t>(exp) + 1 >= digits.size()) {
      out += digits + std::string(exp + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char e[16];
  std::snprintf(e, sizeof(e), "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
  return out + e;
}

namespace {

std::string StrRepr(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == q) {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char b[8];
      std::snprintf(b, sizeof(b), "\\x%02x", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += q;
  return out;
}

void JsonString(const std::string& s, std::string& out) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof(b), "\\u%04x", c);
          out += b;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

absl::Status JsonTo(const Value& v, int indent, int level, std::string& out) {
  const auto newline = [&](int lvl) {
    out += '\n';
    out.append(static_cast<size_t>(indent) * lvl, ' ');
  };
  switch (v.kind) {
    case Kind::kUndefined:
      return absl::InvalidArgumentError("tojson: the value is undefined");
    case Kind::kCallable:
      return absl::InvalidArgumentError("tojson: a callable is not JSON serializable");
    case Kind::kNone:
      out += "null";
      return absl::OkStatus();
    case Kind::kBool:
      out += v.b ? "true" : "false";
      return absl::OkStatus();
    case Kind::kInt:
      out += std::to_string(v.i);
      return absl::OkStatus();
    case Kind::kFloat:
      if (std::isnan(v.f)) {
        out += "NaN";
      } else if (std::isinf(v.f)) {
        out += v.f < 0 ? "-Infinity" : "Infinity";
      } else {
        out += FloatRepr(v.f);
      }
      return absl::OkStatus();
    case Kind::kString:
      JsonString(v.s, out);
      return absl::OkStatus();
    case Kind::kList: {
      if (v.list->empty()) {
        out += "[]";
        return absl::OkStatus();
      }
      out += '[';
      for (size_t i = 0; i < v.list->size(); ++i) {
        if (i > 0) out += indent >= 0 ? "," : ", ";
        if (indent >= 0) newline(level + 1);
        absl::Status s = JsonTo((*v.list)[i], indent, level + 1, out);
        if (!s.ok()) return s;
      }
      if (indent >= 0) newline(level);
      out += ']';
      return absl::OkStatus();
    }
    case Kind::kDict:
    case Kind::kNamespace: {
      if (v.dict->empty()) {
        out += "{}";
        return absl::OkStatus();
      }
      out += '{';
      for (size_t i = 0; i < v.dict->size(); ++i) {
        if (i > 0) out += indent >= 0 ? "," : ", ";
        if (indent >= 0) newline(level + 1);
        JsonString((*v.dict)[i].first, out);
        out += ": ";
        absl::Status s = JsonTo((*v.dict)[i].second, indent, level + 1, out);
        if (!s.ok()) return s;
      }
      if (indent >= 0) newline(level);
      out += '}';
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string Repr(const Value& v) {
  switch (v.kind) {
    case Kind::kString:
      return StrRepr(v.s);
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kList: {
      std::string out = "[";
      for (size_t i = 0; i < v.list->size(); ++i) {
        if (i > 0) out += ", ";
        out += Repr((*v.list)[i]);
      }
      return out + "]";
    }
    case Kind::kDict: {
      std::string out = "{";
      for (size_t i = 0; i < v.dict->size(); ++i) {
        if (i > 0) out += ", ";
        absl::StrAppend(&out, StrRepr((*v.dict)[i].first), ": ", Repr((*v.dict)[i].second));
      }
      return out + "}";
    }
    case Kind::kNamespace:
      return "<Namespace>";
    case Kind::kCallable:
      return "<function>";
    default:
      return ToStr(v);
  }
}

std::string ToStr(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return "";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return v.b ? "True" : "False";
    case Kind::kInt:
      return std::to_string(v.i);
    case Kind::kFloat:
      return FloatRepr(v.f);
    case Kind::kString:
      return v.s;
    default:
      return Repr(v);
  }
}

absl::StatusOr<std::string> ToJson(const Value& v, int indent) {
  std::string out;
  absl::Status s = JsonTo(v, indent, 0, out);
  if (!s.ok()) return s;
  return out;
}

bool Equal(const Value& a, const Value& b) {
  const auto numeric = [](const Value& v) {
    return v.kind == Kind::kInt || v.kind == Kind::kFloat || v.kind == Kind::kBool;
  };
  if (numeric(a) && numeric(b)) {
    const auto as_double = [](const Value& v) {
      return v.kind == Kind::kFloat ? v.f : static_cast<double>(v.kind == Kind::kBool ? v.b : v.i);
    };
    if (a.kind != Kind::kFloat && b.kind != Kind::kFloat) {
      return (a.kind == Kind::kBool ? a.b : a.i) == (b.kind == Kind::kBool ? b.b : b.i);
    }
    return as_double(a) == as_double(b);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return true;
    case Kind::kString:
      return a.s == b.s;
    case Kind::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i) {
        if (!Equal((*a.list)[i], (*b.list)[i])) return false;
      }
      return true;
    case Kind::kDict:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* o = b.Find(k);
        if (!o || !Equal(v, *o)) return false;
      }
      return true;
    default:
      return a.dict == b.dict && a.function == b.function;
  }
}

size_t CodePointCount(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) {
    if ((c & 0xC0) != 0x80) ++n;
  }
  return n;
}

std::vector<Mark> ClipMarks(const std::vector<Mark>& marks, size_t begin, size_t end) {
  std::vector<Mark> out;
  for (const Mark& m : marks) {
    const size_t b = std::max(m.offset, begin);
    const size_t e = std::min(m.offset + m.length, end);
    if (b < e) out.push_back({b - begin, e - b});
  }
  return out;
}

void AppendMarked(std::string& out, std::vector<Mark>& out_marks, const Value& v) {
  if (v.kind == Kind::kString) {
    for (const Mark& m : v.marks) out_marks.push_back({out.size() + m.offset, m.length});
    out += v.s;
  } else {
    out += ToStr(v);
  }
}

bool FullyMarked(const Value& v) {
  return v.kind == Kind::kString && v.marks.size() == 1 && v.marks[0].offset == 0 &&
         v.marks[0].length == v.s.size();
}

}  // namespace pipeinfer::chat::jinja
