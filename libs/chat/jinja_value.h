// Values of the Jinja-subset interpreter (libs/chat/jinja.h): undefined, none, bool, int, float,
// string, list, dict (string keys, insertion order, like a Python dict built from JSON), namespace
// (a dict that `{% set ns.x = ... %}` may change) and callable (macros, global functions).
//
// A string also carries `marks`: byte ranges that came from message content. They follow the text
// through concatenation, output, trimming, slicing and splitting, so that the renderer can report
// where message content landed in the rendered prompt (chat::TextRange). Operations that rewrite a
// string keep its marks only when the whole string was content; otherwise they drop them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pipeinfer::chat::jinja {

// String concatenation that takes std::string_view (absl::StrCat here takes absl::string_view,
// which is not std::string_view in Debian's Abseil).
inline void CatPart(std::string& out, std::string_view v) { out.append(v); }
inline void CatPart(std::string& out, const char* v) { out.append(v); }
inline void CatPart(std::string& out, const std::string& v) { out.append(v); }
inline void CatPart(std::string& out, absl::string_view v) { out.append(v.data(), v.size()); }
template <typename T>
requires std::is_arithmetic_v<T>
void CatPart(std::string& out, T v) { out += std::to_string(v); }
template <typename... T>
std::string Cat(const T&... parts) {
  std::string out;
  (CatPart(out, parts), ...);
  return out;
}

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;
using Kwargs = std::vector<std::pair<std::string, Value>>;
using Function = std::function<absl::StatusOr<Value>(std::vector<Value>& args, Kwargs& kwargs)>;

struct Mark {
  size_t offset = 0;
  size_t length = 0;
};

enum class Kind {
  kUndefined,
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kList,
  kDict,
  kNamespace,
  kCallable
};

struct Value {
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;                       // string; for undefined: the name that was looked up
  std::vector<Mark> marks;             // string only: message-content byte ranges, sorted
  std::shared_ptr<List> list;          // list
  std::shared_ptr<Dict> dict;          // dict, namespace
  std::shared_ptr<Function> function;  // callable

  static Value Undefined(std::string name = "") {
    Value v;
    v.s = std::move(name);
    return v;
  }
  static Value None() { return Of(Kind::kNone); }
  static Value Bool(bool b) {
    Value v = Of(Kind::kBool);
    v.b = b;
    return v;
  }
  static Value Int(int64_t i) {
    Value v = Of(Kind::kInt);
    v.i = i;
    return v;
  }
  static Value Float(double f) {
    Value v = Of(Kind::kFloat);
    v.f = f;
    return v;
  }
  static Value Str(std::string s, std::vector<Mark> marks = {}) {
    Value v = Of(Kind::kString);
    v.s = std::move(s);
    v.marks = std::move(marks);
    return v;
  }
  // A string that is message content as a whole.
  static Value Content(std::string s) {
    std::vector<Mark> m;
    if (!s.empty()) m.push_back({0, s.size()});
    return Str(std::move(s), std::move(m));
  }
  static Value ListOf(List l) {
    Value v = Of(Kind::kList);
    v.list = std::make_shared<List>(std::move(l));
    return v;
  }
  static Value DictOf(Dict d, Kind kind = Kind::kDict) {
    Value v = Of(kind);
    v.dict = std::make_shared<Dict>(std::move(d));
    return v;
  }
  static Value Callable(Function fn) {
    Value v = Of(Kind::kCallable);
    v.function = std::make_shared<Function>(std::move(fn));
    return v;
  }

  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_string() const { return kind == Kind::kString; }
  bool is_number() const { return kind == Kind::kInt || kind == Kind::kFloat; }
  bool is_mapping() const { return kind == Kind::kDict || kind == Kind::kNamespace; }
  // The entry `key` of a dict or namespace; nullptr when absent or not a mapping.
  const Value* Find(std::string_view key) const;
  // Sets (or adds) `key` of a dict or namespace.
  void Set(const std::string& key, Value v);

 private:
  static Value Of(Kind k) {
    Value v;
    v.kind = k;
    return v;
  }
};

// "undefined", "none", "bool", "int", "float", "string", "list", "dict", "namespace", "callable".
std::string_view KindName(Kind k);

// Jinja truthiness (Python's bool()).
bool Truthy(const Value& v);
// Python str(): "" for undefined, "None", "True"/"False", repr of floats, lists and dicts.
std::string ToStr(const Value& v);
// Python repr().
std::string Repr(const Value& v);
// Python repr() of a float ("1.0", "0.1", "1e+16").
std::string FloatRepr(double f);
// Python's json.dumps(v, ensure_ascii=False, indent=indent) with Python's default separators
// (", " and ": " without indent, "," and ": " with it), keys in insertion order: what Hugging
// Face's chat-template `tojson` filter writes. indent < 0 = none. InvalidArgument for undefined
// and callables.
absl::StatusOr<std::string> ToJson(const Value& v, int indent = -1);
// Python ==, with Jinja's undefined equal only to undefined.
bool Equal(const Value& a, const Value& b);

// Number of Unicode code points of UTF-8 text (invalid bytes count one each).
size_t CodePointCount(std::string_view s);

// Marks of text[begin, end) of a string value, relative to `begin`.
std::vector<Mark> ClipMarks(const std::vector<Mark>& marks, size_t begin, size_t end);
// Appends `v`'s text to `out` and its marks, shifted, to `out_marks`.
void AppendMarked(std::string& out, std::vector<Mark>& out_marks, const Value& v);
// True when the marks cover all of a non-empty string.
bool FullyMarked(const Value& v);

// A Value from JSON text (objects keep their key order; strings are NOT marked as content).
absl::StatusOr<Value> ParseJson(std::string_view json);

}  // namespace pipeinfer::chat::jinja
