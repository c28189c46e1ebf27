// A small interpreter for the subset of Jinja that chat templates (GGUF `tokenizer.chat_template`,
// Hugging Face `chat_template`) use, rendering as Hugging Face's Python jinja2 environment does
// (trim_blocks, lstrip_blocks, no autoescape, `tojson` as in transformers).
//
// Supported:
//   text, {{ expr }}, {# comments #}, whitespace control ({%- -%} {{- -}}, {%+ +%});
//   {% if %}/{% elif %}/{% else %}, {% for a[, b] in x [if cond] %} with {% else %}, break and
//   continue, loop.index/index0/revindex/revindex0/first/last/length/previtem/nextitem/cycle();
//   {% set x = e %}, {% set a, b = e %}, {% set ns.attr = e %}, {% set x %}...{% endset %};
//   {% macro m(a, b=default) %} called as m(...); {% generation %} (rendered as is);
//   literals (strings, ints, floats, true/false/none, lists, dicts, tuples), names, .attr,
//   [index], [a:b:step] slices, calls with keyword arguments, and / or / not, == != < <= > >=,
//   in / not in, + - * / // % ** ~, "x if c else y";
//   filters (jinja_builtins.cc): abs capitalize count d default dictsort first float indent int
//     items join last length list lower map max min reject rejectattr replace reverse round safe
//     select selectattr sort string sum title tojson trim unique upper;
//   tests: boolean callable defined divisibleby eq equalto even false float ge gt in integer
//     iterable le lower lt mapping ne none number odd sameas sequence string true undefined upper;
//   methods: str.startswith/endswith/split/rsplit/strip/lstrip/rstrip/replace/upper/lower/title/
//     capitalize/find/count/join/isdigit/isspace..., dict.items/keys/values/get;
//   globals: raise_exception(msg), namespace(...), range(...), dict(...), strftime_now(fmt).
// Anything else is an error with the line and column (unknown statements, filters and tests when
// parsing; unknown methods and type errors when rendering), never a silent wrong render.
//
// Status codes: InvalidArgument for syntax errors, type errors, undefined values used as
// operands and raise_exception() (whose message is kept as is after "chat template: ");
// Unimplemented for syntax or builtins outside the subset.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "chat/jinja_value.h"

namespace pipeinfer::chat::jinja {

struct Node;

class Template {
 public:
  static absl::StatusOr<Template> Parse(std::string source);

  // Renders with the variables of `context`. With `marks`, also returns the byte ranges of the
  // output that came from marked strings (message content), sorted and non-overlapping.
  absl::StatusOr<std::string> Render(const Dict& context, std::vector<Mark>* marks = nullptr) const;

  const std::string& source() const { return *source_; }

 private:
  std::shared_ptr<const std::string> source_;
  std::shared_ptr<const std::vector<std::unique_ptr<Node>>> body_;
};

}  // namespace pipeinfer::chat::jinja
