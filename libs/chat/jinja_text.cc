// String and collection operations of the Jinja-subset interpreter: str methods, dict methods,
// indexing, slicing, iteration, `in` and ordering, all with Python's semantics.
#include "chat/jinja_text.h"

#include <algorithm>
#include <cctype>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "chat/jinja_builtins.h"

namespace pipeinfer::chat::jinja {
namespace {

// The code point of the UTF-8 character s[b, e).
uint32_t CodePoint(std::string_view s, size_t b, size_t e) {
  const auto c = static_cast<unsigned char>(s[b]);
  if (e - b == 1) return c;
  uint32_t cp = c & (e - b == 2 ? 0x1F : e - b == 3 ? 0x0F : 0x07);
  for (size_t i = b + 1; i < e; ++i) cp = (cp << 6) | (static_cast<unsigned char>(s[i]) & 0x3F);
  return cp;
}

// Python's str.isspace() for one character.
bool IsPySpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// [begin, end) byte range that Strip keeps.
std::pair<size_t, size_t> StripRange(std::string_view s, const std::string* chars, bool left,
                                     bool right) {
  const std::vector<size_t> st = CharStarts(s);
  const auto drop = [&](size_t k) {
    const std::string_view ch = s.substr(st[k], st[k + 1] - st[k]);
    if (!chars) return IsPySpace(CodePoint(s, st[k], st[k + 1]));
    const std::vector<size_t> cs = CharStarts(*chars);
    for (size_t j = 0; j + 1 < cs.size(); ++j) {
      if (std::string_view(*chars).substr(cs[j], cs[j + 1] - cs[j]) == ch) return true;
    }
    return false;
  };
  size_t b = 0, e = st.size() - 1;
  if (left) {
    while (b < e && drop(b)) ++b;
  }
  if (right) {
    while (e > b && drop(e - 1)) --e;
  }
  return {st[b], st[e]};
}

Value Sub(const Value& v, size_t b, size_t e) {
  return Value::Str(v.s.substr(b, e - b), ClipMarks(v.marks, b, e));
}

absl::StatusOr<Value> Split(const Value& v, const Value* sep, int64_t maxsplit, bool from_right) {
  List out;
  const std::string& s = v.s;
  if (!sep || sep->kind == Kind::kNone) {
    // Runs of whitespace separate; leading/trailing whitespace yields no empty parts.
    std::vector<std::pair<size_t, size_t>> parts;
    const std::vector<size_t> st = CharStarts(s);
    const auto space = [&](size_t k) { return IsPySpace(CodePoint(s, st[k], st[k + 1])); };
    size_t k = 0;
    const size_t n = st.size() - 1;
    while (k < n) {
      while (k < n && space(k)) ++k;
      if (k == n) break;
      size_t j = k;
      while (j < n && !space(j)) ++j;
      parts.emplace_back(st[k], st[j]);
      k = j;
    }
    if (maxsplit >= 0 && parts.size() > static_cast<size_t>(maxsplit) + 1) {
      if (from_right) {
        const size_t keep = parts.size() - static_cast<size_t>(maxsplit);
        parts[keep - 1].first = parts[0].first;
        parts.erase(parts.begin(), parts.begin() + static_cast<std::ptrdiff_t>(keep - 1));
      } else {
        parts[static_cast<size_t>(maxsplit)].second = parts.back().second;
        parts.resize(static_cast<size_t>(maxsplit) + 1);
      }
    }
    for (const auto& [b, e] : parts) out.push_back(Sub(v, b, e));
    return Value::ListOf(std::move(out));
  }
  if (!sep->is_string()) return absl::InvalidArgumentError("split: the separator must be a string");
  const std::string& d = sep->s;
  if (d.empty()) return absl::InvalidArgumentError("split: empty separator");
  std::vector<size_t> cuts;  // start offsets of separators used
  if (!from_right) {
    size_t p = 0;
    while ((maxsplit < 0 || cuts.size() < static_cast<size_t>(maxsplit)) &&
           (p = s.find(d, p)) != std::string::npos) {
      cuts.push_back(p);
      p += d.size();
    }
  } else {
    size_t end = s.size();
    while ((maxsplit < 0 || cuts.size() < static_cast<size_t>(maxsplit)) && end >= d.size()) {
      const size_t p = s.rfind(d, end - d.size());
      if (p == std::string::npos) break;
      cuts.insert(cuts.begin(), p);
      end = p;
    }
  }
  size_t b = 0;
  for (size_t c : cuts) {
    out.push_back(Sub(v, b, c));
    b = c + d.size();
  }
  out.push_back(Sub(v, b, s.size()));
  return Value::ListOf(std::move(out));
}

std::string Replace(const std::string& s, const std::string& old, const std::string& with,
                    int64_t count) {
  std::string out;
  if (old.empty()) {
    const std::vector<size_t> st = CharStarts(s);
    int64_t n = 0;
    for (size_t k = 0; k < st.size(); ++k) {
      if (count < 0 || n < count) {
        out += with;
        ++n;
      }
      if (k + 1 < st.size()) out += s.substr(st[k], st[k + 1] - st[k]);
    }
    return out;
  }
  size_t b = 0, p;
  int64_t n = 0;
  while ((count < 0 || n < count) && (p = s.find(old, b)) != std::string::npos) {
    out += s.substr(b, p - b);
    out += with;
    b = p + old.size();
    ++n;
  }
  return out + s.substr(b);
}

bool AllChars(const std::string& s, int (*pred)(int)) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(),
                     [&](char c) { return pred(static_cast<unsigned char>(c)); });
}

// A string result derived from `v`: the marks survive only when `v` was all content.
Value Derived(const Value& v, std::string text) {
  if (FullyMarked(v)) return Value::Content(std::move(text));
  return Value::Str(std::move(text));
}

absl::StatusOr<Value> StringMethod(const Value& v, std::string_view name, std::vector<Value>& a,
                                   Kwargs& kw) {
  const auto arg = [&](size_t i, std::string_view key) -> const Value* {
    if (i < a.size()) return &a[i];
    for (const auto& [k, x] : kw) {
      if (k == key) return &x;
    }
    return nullptr;
  };
  const auto int_arg = [&](size_t i, std::string_view key, int64_t def) {
    const Value* x = arg(i, key);
    return x && x->kind == Kind::kInt ? x->i : def;
  };
  const std::string& s = v.s;
  if (name == "startswith" || name == "endswith") {
    const Value* p = arg(0, "prefix");
    if (!p) return absl::InvalidArgumentError(Cat(name, "() needs an argument"));
    std::vector<std::string> options;
    if (p->is_string()) {
      options.push_back(p->s);
    } else if (p->kind == Kind::kList) {
      for (const Value& x : *p->list) options.push_back(ToStr(x));
    } else {
      return absl::InvalidArgumentError(Cat(name, "() needs a string"));
    }
    for (const std::string& o : options) {
      if (name == "startswith"
              ? s.compare(0, o.size(), o) == 0 && s.size() >= o.size()
              : s.size() >= o.size() && s.compare(s.size() - o.size(), o.size(), o) == 0) {
        return Value::Bool(true);
      }
    }
    return Value::Bool(false);
  }
  if (name == "split" || name == "rsplit") {
    return Split(v, arg(0, "sep"), int_arg(1, "maxsplit", -1), name == "rsplit");
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const Value* chars = arg(0, "chars");
    if (chars && !chars->is_string() && chars->kind != Kind::kNone) {
      return absl::InvalidArgumentError(Cat(name, "() takes a string"));
    }
    return StripValue(v, chars && chars->is_string() ? &chars->s : nullptr, name != "rstrip",
                      name != "lstrip");
  }
  if (name == "replace") {
    const Value* old = arg(0, "old");
    const Value* with = arg(1, "new");
    if (!old || !with || !old->is_string() || !with->is_string()) {
      return absl::InvalidArgumentError("replace() takes two strings");
    }
    return Derived(v, Replace(s, old->s, with->s, int_arg(2, "count", -1)));
  }
  if (name == "upper") return Derived(v, Upper(s));
  if (name == "lower") return Derived(v, Lower(s));
  if (name == "capitalize") {
    std::string out = Lower(s);
    if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
    return Derived(v, std::move(out));
  }
  if (name == "title") {
    std::string out = s;
    bool prev_alpha = false;
    for (char& c : out) {
      const auto u = static_cast<unsigned char>(c);
      c = static_cast<char>(prev_alpha ? std::tolower(u) : std::toupper(u));
      prev_alpha = std::isalpha(u) != 0;
    }
    return Derived(v, std::move(out));
  }
  if (name == "find" || name == "rfind" || name == "count") {
    const Value* sub = arg(0, "sub");
    if (!sub || !sub->is_string())
      return absl::InvalidArgumentError(Cat(name, "() takes a string"));
    if (name == "count") {
      if (sub->s.empty()) return Value::Int(static_cast<int64_t>(CodePointCount(s)) + 1);
      int64_t n = 0;
      for (size_t p = s.find(sub->s); p != std::string::npos;
           p = s.find(sub->s, p + sub->s.size())) {
        ++n;
      }
      return Value::Int(n);
    }
    const size_t p = name == "find" ? s.find(sub->s) : s.rfind(sub->s);
    if (p == std::string::npos) return Value::Int(-1);
    return Value::Int(static_cast<int64_t>(CodePointCount(std::string_view(s).substr(0, p))));
  }
  if (name == "join") {
    const Value* items = arg(0, "iterable");
    if (!items) return absl::InvalidArgumentError("join() takes an iterable");
    auto list = Iterate(*items);
    if (!list.ok()) return list.status();
    Value out = Value::Str("");
    for (size_t i = 0; i < list->size(); ++i) {
      if (i > 0) AppendMarked(out.s, out.marks, v);
      AppendMarked(out.s, out.marks, (*list)[i]);
    }
    return out;
  }
  if (name == "splitlines") {
    List out;
    size_t b = 0;
    while (b < s.size()) {
      size_t e = s.find('\n', b);
      if (e == std::string::npos) e = s.size();
      size_t line_end = e;
      if (line_end > b && s[line_end - 1] == '\r') --line_end;
      out.push_back(Sub(v, b, line_end));
      b = e + 1;
    }
    return Value::ListOf(std::move(out));
  }
  if (name == "isdigit") return Value::Bool(AllChars(s, std::isdigit));
  if (name == "isalpha") return Value::Bool(AllChars(s, std::isalpha));
  if (name == "isalnum") return Value::Bool(AllChars(s, std::isalnum));
  if (name == "isspace") return Value::Bool(AllChars(s, std::isspace));
  if (name == "islower") return Value::Bool(Lower(s) == s && Upper(s) != s);
  if (name == "isupper") return Value::Bool(Upper(s) == s && Lower(s) != s);
  return absl::NotFoundError(Cat("no string method ", name));
}

}  // namespace

std::vector<size_t> CharStarts(std::string_view s) {
  std::vector<size_t> st;
  st.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if ((c & 0xC0) != 0x80 || st.empty()) st.push_back(i);
  }
  st.push_back(s.size());
  return st;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string Upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string Strip(std::string_view s, const std::string* chars, bool left, bool right) {
  const auto [b, e] = StripRange(s, chars, left, right);
  return std::string(s.substr(b, e - b));
}

Value StripValue(const Value& v, const std::string* chars, bool left, bool right) {
  const auto [b, e] = StripRange(v.s, chars, left, right);
  return Sub(v, b, e);
}

absl::StatusOr<Value> CallMethod(const Value& obj, std::string_view name, std::vector<Value>& args,
                                 Kwargs& kwargs) {
  if (obj.is_string()) return StringMethod(obj, name, args, kwargs);
  if (obj.kind == Kind::kDict) {
    if (name == "items" || name == "keys" || name == "values") {
      List l;
      for (const auto& [k, v] : *obj.dict) {
        if (name == "items") {
          l.push_back(Value::ListOf({Value::Str(k), v}));
        } else {
          l.push_back(name == "keys" ? Value::Str(k) : v);
        }
      }
      return Value::ListOf(std::move(l));
    }
    if (name == "get") {
      if (args.empty() || !args[0].is_string()) {
        return absl::InvalidArgumentError("get() takes a string key");
      }
      const Value* v = obj.Find(args[0].s);
      if (v) return *v;
      return args.size() > 1 ? args[1] : Value::None();
    }
  }
  return absl::NotFoundError(Cat("no method ", name));
}

absl::StatusOr<List> Iterate(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return List{};
    case Kind::kList:
      return *v.list;
    case Kind::kDict: {
      List l;
      for (const auto& [k, x] : *v.dict) l.push_back(Value::Str(k));
      return l;
    }
    case Kind::kString: {
      List l;
      const std::vector<size_t> st = CharStarts(v.s);
      for (size_t k = 0; k + 1 < st.size(); ++k) l.push_back(Sub(v, st[k], st[k + 1]));
      return l;
    }
    default:
      return absl::InvalidArgumentError(Cat("a ", KindName(v.kind), " is not iterable"));
  }
}

absl::StatusOr<bool> Contains(const Value& c, const Value& item) {
  switch (c.kind) {
    case Kind::kUndefined:
      return false;
    case Kind::kString:
      if (!item.is_string()) {
        return absl::InvalidArgumentError(
            Cat("'in <string>' needs a string on the left, not a ", KindName(item.kind)));
      }
      return c.s.find(item.s) != std::string::npos;
    case Kind::kList:
      return std::any_of(c.list->begin(), c.list->end(),
                         [&](const Value& x) { return Equal(x, item); });
    case Kind::kDict:
    case Kind::kNamespace:
      return item.is_string() && c.Find(item.s) != nullptr;
    default:
      return absl::InvalidArgumentError(
          Cat("'in' needs a container on the right, not a ", KindName(c.kind)));
  }
}

absl::StatusOr<bool> Less(const Value& a, const Value& b) {
  const auto num = [](const Value& v) { return v.is_number() || v.kind == Kind::kBool; };
  const auto as_double = [](const Value& v) {
    return v.kind == Kind::kFloat ? v.f : static_cast<double>(v.kind == Kind::kBool ? v.b : v.i);
  };
  if (num(a) && num(b)) {
    if (a.kind != Kind::kFloat && b.kind != Kind::kFloat) {
      return (a.kind == Kind::kBool ? a.b : a.i) < (b.kind == Kind::kBool ? b.b : b.i);
    }
    return as_double(a) < as_double(b);
  }
  if (a.is_string() && b.is_string()) return a.s < b.s;
  if (a.kind == Kind::kList && b.kind == Kind::kList) {
    for (size_t i = 0; i < a.list->size() && i < b.list->size(); ++i) {
      if (Equal((*a.list)[i], (*b.list)[i])) continue;
      return Less((*a.list)[i], (*b.list)[i]);
    }
    return a.list->size() < b.list->size();
  }
  return absl::InvalidArgumentError(
      Cat("cannot compare a ", KindName(a.kind), " with a ", KindName(b.kind)));
}

Value GetItem(const Value& obj, const Value& key) {
  if (obj.is_mapping()) {
    if (!key.is_string()) return Value::Undefined();
    const Value* v = obj.Find(key.s);
    return v ? *v : Value::Undefined(key.s);
  }
  if (key.kind != Kind::kInt) return Value::Undefined(ToStr(key));
  if (obj.kind == Kind::kList) {
    const auto n = static_cast<int64_t>(obj.list->size());
    const int64_t i = key.i < 0 ? key.i + n : key.i;
    if (i < 0 || i >= n) return Value::Undefined(Cat("[", key.i, "]"));
    return (*obj.list)[static_cast<size_t>(i)];
  }
  if (obj.is_string()) {
    const std::vector<size_t> st = CharStarts(obj.s);
    const auto n = static_cast<int64_t>(st.size() - 1);
    const int64_t i = key.i < 0 ? key.i + n : key.i;
    if (i < 0 || i >= n) return Value::Undefined(Cat("[", key.i, "]"));
    return Sub(obj, st[static_cast<size_t>(i)], st[static_cast<size_t>(i) + 1]);
  }
  return Value::Undefined();
}

absl::StatusOr<Value> Slice(const Value& obj, const Value* start, const Value* stop,
                            const Value* step) {
  const auto as_int = [](const Value* v, bool* given, int64_t* out) -> absl::Status {
    *given = v && v->kind != Kind::kNone;
    if (!*given) return absl::OkStatus();
    if (v->kind != Kind::kInt) return absl::InvalidArgumentError("slice indices must be integers");
    *out = v->i;
    return absl::OkStatus();
  };
  bool has_start, has_stop, has_step;
  int64_t b = 0, e = 0, st = 1;
  for (auto [v, g, o] : {std::tuple{start, &has_start, &b}, std::tuple{stop, &has_stop, &e},
                         std::tuple{step, &has_step, &st}}) {
    if (auto s = as_int(v, g, o); !s.ok()) return s;
  }
  if (st == 0) return absl::InvalidArgumentError("slice step cannot be zero");
  std::vector<size_t> cs;
  int64_t n;
  if (obj.kind == Kind::kList) {
    n = static_cast<int64_t>(obj.list->size());
  } else if (obj.is_string()) {
    cs = CharStarts(obj.s);
    n = static_cast<int64_t>(cs.size() - 1);
  } else {
    return absl::InvalidArgumentError(Cat("cannot slice a ", KindName(obj.kind)));
  }
  const int64_t lower = st > 0 ? 0 : -1, upper = st > 0 ? n : n - 1;
  const auto clamp = [&](bool given, int64_t x, int64_t def) {
    if (!given) return def;
    if (x < 0) x += n;
    return std::clamp(x, lower, upper);
  };
  b = clamp(has_start, b, st > 0 ? lower : upper);
  e = clamp(has_stop, e, st > 0 ? upper : lower);
  if (obj.is_string() && st == 1) {
    if (e <= b) return Value::Str("");
    return Sub(obj, cs[static_cast<size_t>(b)], cs[static_cast<size_t>(e)]);
  }
  List l;
  std::string text;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) {
    if (obj.kind == Kind::kList) {
      l.push_back((*obj.list)[static_cast<size_t>(i)]);
    } else {
      text += obj.s.substr(cs[static_cast<size_t>(i)],
                           cs[static_cast<size_t>(i) + 1] - cs[static_cast<size_t>(i)]);
    }
  }
  if (obj.is_string()) return Derived(obj, std::move(text));
  return Value::ListOf(std::move(l));
}

}  // namespace pipeinfer::chat::jinja
