#include "chat/jinja_builtins.h"

#include <algorithm>
#include <cmath>
#include <ctime>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "chat/jinja_ast.h"
#include "chat/jinja_text.h"

namespace pipeinfer::chat::jinja {
namespace {

absl::Status TypeError(std::string_view what, const Value& v) {
  return absl::InvalidArgumentError(Cat(what, ": unsupported type ", KindName(v.kind)));
}

const Value* Kw(const Kwargs& kwargs, std::string_view name) {
  for (const auto& [k, v] : kwargs) {
    if (k == name) return &v;
  }
  return nullptr;
}

// Argument `i` or keyword `name`, or nullptr.
const Value* Arg(const std::vector<Value>& args, const Kwargs& kwargs, size_t i,
                 std::string_view name) {
  if (i < args.size()) return &args[i];
  return Kw(kwargs, name);
}

absl::StatusOr<int64_t> AsInt(const Value* v, int64_t def, std::string_view what) {
  if (!v || v->kind == Kind::kNone || v->is_undefined()) return def;
  if (v->kind == Kind::kInt) return v->i;
  if (v->kind == Kind::kBool) return static_cast<int64_t>(v->b);
  return absl::InvalidArgumentError(Cat(what, " must be an integer"));
}

// A string that keeps its marks only when it was all content (for text rewrites).
Value Rewritten(const Value& from, std::string text) {
  if (FullyMarked(from)) return Value::Content(std::move(text));
  return Value::Str(std::move(text));
}

Value Attribute(const Value& v, const std::string& dotted) {
  Value cur = v;
  size_t b = 0;
  while (true) {
    const size_t e = dotted.find('.', b);
    const std::string part = dotted.substr(b, e == std::string::npos ? std::string::npos : e - b);
    const Value* next = cur.Find(part);
    if (!next) {
      cur = GetItem(cur, Value::Str(part));
    } else {
      cur = *next;
    }
    if (e == std::string::npos) return cur;
    b = e + 1;
  }
}

absl::StatusOr<List> SortList(List l, bool reverse, bool case_sensitive, const Value* attribute) {
  absl::Status err;
  auto key = [&](const Value& v) {
    Value k = attribute ? Attribute(v, attribute->s) : v;
    if (!case_sensitive && k.is_string()) k = Value::Str(Lower(k.s));
    return k;
  };
  std::stable_sort(l.begin(), l.end(), [&](const Value& a, const Value& b) {
    auto r = Less(key(a), key(b));
    if (!r.ok()) {
      err = r.status();
      return false;
    }
    return *r;
  });
  if (!err.ok()) return err;
  if (reverse) std::reverse(l.begin(), l.end());
  return l;
}

absl::StatusOr<Value> SelectFilter(std::string_view name, const Value& subject,
                                   std::vector<Value>& args) {
  const bool by_attr = name == "selectattr" || name == "rejectattr";
  const bool keep_when = name == "select" || name == "selectattr";
  auto items = Iterate(subject);
  if (!items.ok()) return items.status();
  size_t next = 0;
  std::string attr;
  if (by_attr) {
    if (args.empty() || !args[0].is_string()) {
      return absl::InvalidArgumentError(Cat(name, " needs an attribute name"));
    }
    attr = args[0].s;
    next = 1;
  }
  std::string test;
  if (next < args.size()) {
    if (!args[next].is_string())
      return absl::InvalidArgumentError("the test name must be a string");
    test = args[next].s;
    ++next;
  }
  if (!test.empty() && !IsKnownTest(test)) {
    return absl::UnimplementedError(Cat("unsupported test '", test, "'"));
  }
  std::vector<Value> test_args(args.begin() + static_cast<std::ptrdiff_t>(next), args.end());
  List out;
  for (const Value& item : *items) {
    const Value v = by_attr ? Attribute(item, attr) : item;
    bool ok = Truthy(v);
    if (!test.empty()) {
      auto r = ApplyTest(test, v, test_args);
      if (!r.ok()) return r.status();
      ok = *r;
    }
    if (ok == keep_when) out.push_back(item);
  }
  return Value::ListOf(std::move(out));
}

}  // namespace

bool IsKnownFilter(std::string_view n) {
  static constexpr std::string_view kFilters[] = {
      "abs",     "capitalize", "count", "d",      "default", "dictsort",   "first",
      "float",   "indent",     "int",   "items",  "join",    "last",       "length",
      "list",    "lower",      "map",   "max",    "min",     "reject",     "rejectattr",
      "replace", "reverse",    "round", "safe",   "select",  "selectattr", "sort",
      "string",  "sum",        "title", "tojson", "trim",    "unique",     "upper"};
  return std::find(std::begin(kFilters), std::end(kFilters), n) != std::end(kFilters);
}

bool IsKnownTest(std::string_view n) {
  static constexpr std::string_view kTests[] = {
      "boolean", "callable", "defined",  "divisibleby", "eq",   "equalto",   "even",
      "false",   "float",    "ge",       "gt",          "in",   "integer",   "iterable",
      "le",      "lower",    "lt",       "mapping",     "ne",   "none",      "number",
      "odd",     "sameas",   "sequence", "string",      "true", "undefined", "upper"};
  return std::find(std::begin(kTests), std::end(kTests), n) != std::end(kTests);
}

absl::StatusOr<Value> ApplyFilter(std::string_view name, const Value& v, std::vector<Value>& args,
                                  Kwargs& kwargs) {
  if (name == "default" || name == "d") {
    const Value* def = Arg(args, kwargs, 0, "default_value");
    const Value* boolean = Arg(args, kwargs, 1, "boolean");
    const bool use = v.is_undefined() || (boolean && Truthy(*boolean) && !Truthy(v));
    if (!use) return v;
    return def ? *def : Value::Str("");
  }
  if (name == "safe") return v;
  if (name == "length" || name == "count") {
    switch (v.kind) {
      case Kind::kUndefined:
        return Value::Int(0);
      case Kind::kString:
        return Value::Int(static_cast<int64_t>(CodePointCount(v.s)));
      case Kind::kList:
        return Value::Int(static_cast<int64_t>(v.list->size()));
      case Kind::kDict:
      case Kind::kNamespace:
        return Value::Int(static_cast<int64_t>(v.dict->size()));
      default:
        return TypeError("length", v);
    }
  }
  if (name == "string") return v.is_string() ? v : Value::Str(ToStr(v));
  if (name == "tojson") {
    auto indent = AsInt(Arg(args, kwargs, 0, "indent"), -1, "tojson indent");
    if (!indent.ok()) return indent.status();
    for (const auto& [k, x] : kwargs) {
      if (k != "indent" && !(k == "ensure_ascii" && !Truthy(x)) &&
          !(k == "sort_keys" && !Truthy(x))) {
        return absl::UnimplementedError(Cat("unsupported tojson argument '", k, "'"));
      }
    }
    auto j = ToJson(v, static_cast<int>(*indent));
    if (!j.ok()) return j.status();
    return Value::Str(std::move(*j));
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::ListOf({});
    if (!v.is_mapping()) return TypeError("items", v);
    List l;
    for (const auto& [k, x] : *v.dict) l.push_back(Value::ListOf({Value::Str(k), x}));
    return Value::ListOf(std::move(l));
  }
  if (name == "dictsort") {
    if (!v.is_mapping()) return TypeError("dictsort", v);
    List l;
    for (const auto& [k, x] : *v.dict) l.push_back(Value::ListOf({Value::Str(k), x}));
    std::stable_sort(l.begin(), l.end(), [](const Value& a, const Value& b) {
      return Lower((*a.list)[0].s) < Lower((*b.list)[0].s);
    });
    return Value::ListOf(std::move(l));
  }
  if (name == "list") {
    auto items = Iterate(v);
    if (!items.ok()) return items.status();
    return Value::ListOf(std::move(*items));
  }
  if (name == "first" || name == "last") {
    auto items = Iterate(v);
    if (!items.ok()) return items.status();
    if (items->empty()) return Value::Undefined(std::string(name));
    return name == "first" ? items->front() : items->back();
  }
  if (name == "reverse") {
    if (v.is_string()) {
      std::string out;
      const auto starts = CharStarts(v.s);
      for (size_t i = starts.size() - 1; i > 0; --i) {
        out += v.s.substr(starts[i - 1], starts[i] - starts[i - 1]);
      }
      return Rewritten(v, std::move(out));
    }
    auto items = Iterate(v);
    if (!items.ok()) return items.status();
    std::reverse(items->begin(), items->end());
    return Value::ListOf(std::move(*items));
  }
  if (name == "join") {
    auto items = Iterate(v);
    if (!items.ok()) return items.status();
    const Value* sep = Arg(args, kwargs, 0, "d");
    const Value* attr = Arg(args, kwargs, 1, "attribute");
    Value out = Value::Str("");
    for (size_t i = 0; i < items->size(); ++i) {
      if (i > 0 && sep) AppendMarked(out.s, out.marks, *sep);
      AppendMarked(out.s, out.marks, attr ? Attribute((*items)[i], ToStr(*attr)) : (*items)[i]);
    }
    return out;
  }
  if (name == "map") {
    auto items = Iterate(v);
    if (!items.ok()) return items.status();
    List out;
    if (const Value* attr = Kw(kwargs, "attribute")) {
      const Value* def = Kw(kwargs, "default");
      for (const Value& x : *items) {
        Value a = Attribute(x, ToStr(*attr));
        out.push_back(a.is_undefined() && def ? *def : a);
      }
      return Value::ListOf(std::move(out));
    }
    if (args.empty() || !args[0].is_string()) {
      return absl::InvalidArgumentError("map needs a filter name or attribute=");
    }
    const std::string filter = args[0].s;
    if (!IsKnownFilter(filter)) {
      return absl::UnimplementedError(Cat("unsupported filter '", filter, "'"));
    }
    std::vector<Value> rest(args.begin() + 1, args.end());
    Kwargs none;
    for (const Value& x : *items) {
      auto r = ApplyFilter(filter, x, rest, none);
      if (!r.ok()) return r.status();
      out.push_back(std::move(*r));
    }
    return Value::ListOf(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    return SelectFilter(name, v, args);
  }
  if (name == "unique") {
    auto items = Iterate(v);
    if (!items.ok()) return items.status();
    List out;
    for (const Value& x : *items) {
      if (std::none_of(out.begin(), out.end(), [&](const Value& y) { return Equal(x, y); })) {
        out.push_back(x);
      }
    }
    return Value::ListOf(std::move(out));
  }
  if (name == "sort") {
    auto items = Iterate(v);
    if (!items.ok()) return items.status();
    const Value* rev = Arg(args, kwargs, 0, "reverse");
    const Value* cs = Arg(args, kwargs, 1, "case_sensitive");
    auto l = SortList(std::move(*items), rev && Truthy(*rev), cs && Truthy(*cs),
                      Arg(args, kwargs, 2, "attribute"));
    if (!l.ok()) return l.status();
    return Value::ListOf(std::move(*l));
  }
  if (name == "max" || name == "min") {
    auto items = Iterate(v);
    if (!items.ok()) return items.status();
    auto l = SortList(std::move(*items), false, false, Kw(kwargs, "attribute"));
    if (!l.ok()) return l.status();
    if (l->empty()) return Value::Undefined(std::string(name));
    return name == "min" ? l->front() : l->back();
  }
  if (name == "sum") {
    auto items = Iterate(v);
    if (!items.ok()) return items.status();
    const Value* attr = Arg(args, kwargs, 0, "attribute");
    const Value* start = Arg(args, kwargs, 1, "start");
    int64_t si = 0;
    double sf = 0;
    bool is_float = start && start->kind == Kind::kFloat;
    if (is_float) sf = start->f;
    if (start && start->kind == Kind::kInt) si = start->i;
    for (const Value& x0 : *items) {
      const Value x = attr ? Attribute(x0, ToStr(*attr)) : x0;
      if (x.kind == Kind::kInt || x.kind == Kind::kBool) {
        si += x.kind == Kind::kInt ? x.i : x.b;
      } else if (x.kind == Kind::kFloat) {
        is_float = true;
        sf += x.f;
      } else {
        return TypeError("sum", x);
      }
    }
    return is_float ? Value::Float(sf + static_cast<double>(si)) : Value::Int(si);
  }
  if (name == "abs") {
    if (v.kind == Kind::kInt) return Value::Int(v.i < 0 ? -v.i : v.i);
    if (v.kind == Kind::kFloat) return Value::Float(std::fabs(v.f));
    return TypeError("abs", v);
  }
  if (name == "int") {
    if (v.kind == Kind::kInt) return v;
    if (v.kind == Kind::kBool) return Value::Int(v.b);
    if (v.kind == Kind::kFloat) return Value::Int(static_cast<int64_t>(v.f));
    const Value* def = Arg(args, kwargs, 0, "default");
    if (v.is_string()) {
      const std::string t = Strip(v.s, nullptr, true, true);
      char* end = nullptr;
      const long long x = std::strtoll(t.c_str(), &end, 10);
      if (!t.empty() && end == t.c_str() + t.size()) return Value::Int(x);
    }
    return def ? *def : Value::Int(0);
  }
  if (name == "float") {
    if (v.kind == Kind::kFloat) return v;
    if (v.kind == Kind::kInt) return Value::Float(static_cast<double>(v.i));
    if (v.kind == Kind::kBool) return Value::Float(v.b);
    const Value* def = Arg(args, kwargs, 0, "default");
    if (v.is_string()) {
      const std::string t = Strip(v.s, nullptr, true, true);
      char* end = nullptr;
      const double x = std::strtod(t.c_str(), &end);
      if (!t.empty() && end == t.c_str() + t.size()) return Value::Float(x);
    }
    return def ? *def : Value::Float(0);
  }
  if (name == "round") {
    auto precision = AsInt(Arg(args, kwargs, 0, "precision"), 0, "round precision");
    if (!precision.ok()) return precision.status();
    const Value* method = Arg(args, kwargs, 1, "method");
    const std::string m = method && method->is_string() ? method->s : "common";
    double x = v.kind == Kind::kFloat ? v.f : v.kind == Kind::kInt ? static_cast<double>(v.i) : NAN;
    if (std::isnan(x)) return TypeError("round", v);
    const double scale = std::pow(10.0, static_cast<double>(*precision));
    x *= scale;
    x = m == "ceil" ? std::ceil(x) : m == "floor" ? std::floor(x) : std::round(x);
    return Value::Float(x / scale);
  }
  if (name == "indent") {
    if (!v.is_string()) return TypeError("indent", v);
    const Value* width = Arg(args, kwargs, 0, "width");
    const Value* first = Arg(args, kwargs, 1, "first");
    const Value* blank = Arg(args, kwargs, 2, "blank");
    std::string pad = width && width->is_string()
                          ? width->s
                          : std::string(width && width->kind == Kind::kInt ? width->i : 4, ' ');
    std::string out;
    size_t b = 0;
    bool first_line = true;
    while (true) {
      const size_t e = v.s.find('\n', b);
      const std::string line = v.s.substr(b, e == std::string::npos ? std::string::npos : e - b);
      const bool indent_it =
          first_line ? (first && Truthy(*first)) : (!line.empty() || (blank && Truthy(*blank)));
      if (!first_line) out += '\n';
      if (indent_it) out += pad;
      out += line;
      first_line = false;
      if (e == std::string::npos) break;
      b = e + 1;
    }
    return Value::Str(std::move(out));
  }
  if (name == "trim") {
    if (!v.is_string()) return TypeError("trim", v);
    const Value* chars = Arg(args, kwargs, 0, "chars");
    return StripValue(v, chars && chars->is_string() ? &chars->s : nullptr, true, true);
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize" ||
      name == "replace") {
    if (!v.is_string()) return TypeError(name, v);
    Kwargs kw = kwargs;
    return CallMethod(v, name, args, kw);
  }
  return absl::UnimplementedError(Cat("unsupported filter '", name, "'"));
}

absl::StatusOr<bool> ApplyTest(std::string_view name, const Value& v, std::vector<Value>& args) {
  const Value* a = args.empty() ? nullptr : &args[0];
  const auto need = [&]() -> absl::Status {
    if (a) return absl::OkStatus();
    return absl::InvalidArgumentError(Cat("test '", name, "' needs an argument"));
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.kind == Kind::kNone;
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.kind == Kind::kDict;
  if (name == "sequence") {
    return v.is_string() || v.kind == Kind::kList || v.kind == Kind::kDict;
  }
  if (name == "iterable") {
    return v.is_string() || v.kind == Kind::kList || v.kind == Kind::kDict || v.is_undefined();
  }
  if (name == "number") return v.is_number() || v.kind == Kind::kBool;
  if (name == "integer") return v.kind == Kind::kInt;
  if (name == "float") return v.kind == Kind::kFloat;
  if (name == "boolean") return v.kind == Kind::kBool;
  if (name == "true") return v.kind == Kind::kBool && v.b;
  if (name == "false") return v.kind == Kind::kBool && !v.b;
  if (name == "callable") return v.kind == Kind::kCallable;
  if (name == "lower") return v.is_string() && Lower(v.s) == v.s && Upper(v.s) != v.s;
  if (name == "upper") return v.is_string() && Upper(v.s) == v.s && Lower(v.s) != v.s;
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (v.kind != Kind::kInt) return TypeError(name, v);
    if (name == "odd") return v.i % 2 != 0;
    if (name == "even") return v.i % 2 == 0;
    if (auto s = need(); !s.ok()) return s;
    if (a->kind != Kind::kInt || a->i == 0) return absl::InvalidArgumentError("bad divisor");
    return v.i % a->i == 0;
  }
  if (auto s = need(); !s.ok()) return s;
  if (name == "eq" || name == "equalto") return Equal(v, *a);
  if (name == "ne") return !Equal(v, *a);
  if (name == "sameas") return Equal(v, *a) && v.kind == a->kind;
  if (name == "in") return Contains(*a, v);
  if (name == "lt") return Less(v, *a);
  if (name == "gt") return Less(*a, v);
  if (name == "le" || name == "ge") {
    auto r = name == "le" ? Less(*a, v) : Less(v, *a);
    if (!r.ok()) return r;
    return !*r;
  }
  return absl::UnimplementedError(Cat("unsupported test '", name, "'"));
}

void AddGlobals(Dict& g) {
  g.emplace_back("raise_exception",
                 Value::Callable([](std::vector<Value>& args, Kwargs&) -> absl::StatusOr<Value> {
                   return absl::InvalidArgumentError(
                       args.empty() ? std::string("raise_exception() was called") : ToStr(args[0]));
                 }));
  g.emplace_back("namespace",
                 Value::Callable([](std::vector<Value>& args, Kwargs& kw) -> absl::StatusOr<Value> {
                   Value ns = Value::DictOf({}, Kind::kNamespace);
                   for (const Value& a : args) {
                     if (!a.is_mapping()) return TypeError("namespace", a);
                     for (const auto& [k, v] : *a.dict) ns.Set(k, v);
                   }
                   for (const auto& [k, v] : kw) ns.Set(k, v);
                   return ns;
                 }));
  g.emplace_back("dict",
                 Value::Callable([](std::vector<Value>& args, Kwargs& kw) -> absl::StatusOr<Value> {
                   Value d = Value::DictOf({});
                   for (const Value& a : args) {
                     if (!a.is_mapping()) return TypeError("dict", a);
                     for (const auto& [k, v] : *a.dict) d.Set(k, v);
                   }
                   for (const auto& [k, v] : kw) d.Set(k, v);
                   return d;
                 }));
  g.emplace_back("range",
                 Value::Callable([](std::vector<Value>& args, Kwargs&) -> absl::StatusOr<Value> {
                   int64_t p[3] = {0, 0, 1};
                   if (args.empty() || args.size() > 3) {
                     return absl::InvalidArgumentError("range() takes 1 to 3 integers");
                   }
                   for (size_t i = 0; i < args.size(); ++i) {
                     if (args[i].kind != Kind::kInt) {
                       return absl::InvalidArgumentError("range() takes integers");
                     }
                   }
                   if (args.size() == 1) {
                     p[1] = args[0].i;
                   } else {
                     for (size_t i = 0; i < args.size(); ++i) p[i] = args[i].i;
                   }
                   if (p[2] == 0) return absl::InvalidArgumentError("range() step is 0");
                   List l;
                   for (int64_t x = p[0]; p[2] > 0 ? x < p[1] : x > p[1]; x += p[2]) {
                     if (l.size() >= 1000000) {
                       return absl::InvalidArgumentError("range() is too long");
                     }
                     l.push_back(Value::Int(x));
                   }
                   return Value::ListOf(std::move(l));
                 }));
  g.emplace_back("strftime_now",
                 Value::Callable([](std::vector<Value>& args, Kwargs&) -> absl::StatusOr<Value> {
                   if (args.size() != 1 || !args[0].is_string()) {
                     return absl::InvalidArgumentError("strftime_now() takes a format string");
                   }
                   const std::time_t now = std::time(nullptr);
                   std::tm tm{};
                   localtime_r(&now, &tm);
                   char buf[256];
                   const size_t n = std::strftime(buf, sizeof(buf), args[0].s.c_str(), &tm);
                   return Value::Str(std::string(buf, n));
                 }));
}

}  // namespace pipeinfer::chat::jinja
