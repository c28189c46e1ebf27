// The Jinja-subset interpreter against Jinja / Python semantics. Every expected string is what
// Python's jinja2 (with Hugging Face's trim_blocks / lstrip_blocks) gives for the template,
// worked out from the language rules, not taken from this interpreter.
#include "chat/jinja.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pipeinfer::chat::jinja {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<std::string> RenderT(const std::string& source, Dict ctx = {},
                                    std::vector<Mark>* marks = nullptr) {
  auto t = Template::Parse(source);
  if (!t.ok()) return t.status();
  return t->Render(ctx, marks);
}

std::string Ok(const std::string& source, Dict ctx = {}) {
  auto r = RenderT(source, std::move(ctx));
  EXPECT_TRUE(r.ok()) << source << ": " << r.status();
  return r.ok() ? *r : "<error>";
}

TEST(Jinja, Arithmetic) {
  EXPECT_EQ(Ok("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % -3 }} {{ 1 / 2 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 }}"),
            "3 -4 -2 0.5 1024 7");
  EXPECT_EQ(Ok("{{ 0.1 + 0.2 }} {{ 3.0 }} {{ 1e20 }} {{ 2 * 1.5 }} {{ 10 - 2.5 }}"),
            "0.30000000000000004 3.0 1e+20 3.0 7.5");
  EXPECT_EQ(Ok("{{ 'ab' * 3 }} {{ 'a' ~ 1 ~ none ~ true }} {{ [1] + [2] }}"),
            "ababab a1NoneTrue [1, 2]");
}

TEST(Jinja, ComparisonsAndLogic) {
  EXPECT_EQ(Ok("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ 'a' != 'b' }} {{ 'b' in 'abc' }}"
               " {{ 2 not in [1, 2] }} {{ 'k' in {'k': 1} }}"),
            "True False True True True False True");
  EXPECT_EQ(Ok("{{ 0 or 'x' }} {{ 1 and [] }} {{ not none }} {{ 'y' if 0 else 'n' }}"),
            "x [] True n");
  EXPECT_EQ(Ok("[{{ 'y' if false }}]"), "[]");
}

TEST(Jinja, StringsSlicesAndMethods) {
  EXPECT_EQ(Ok("{{ 'a,b,,c'.split(',') }}|{{ '  x  y '.split() }}|{{ 'a b c'.split(' ', 1) }}"),
            "['a', 'b', '', 'c']|['x', 'y']|['a', 'b c']");
  EXPECT_EQ(Ok("{{ [1, 2, 3][::-1] }} {{ 'hello'[1:3] }} {{ 'hello'[-1] }} {{ [1, 2, 3][1:] }}"
               " {{ 'abcdef'[::2] }}"),
            "[3, 2, 1] el o [2, 3] ace");
  EXPECT_EQ(Ok("{{ 'h\xc3\xa9llo'[1] }}{{ 'h\xc3\xa9llo' | length }}"),
            "\xc3\xa9"
            "5");
  EXPECT_EQ(Ok("{{ '\\n\\nx\\n'.strip('\\n') }}|{{ 'xxhixx'.lstrip('x') }}|{{ ' a '.rstrip() }}|"),
            "x|hixx| a|");
  EXPECT_EQ(Ok("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} "
               "{{ 'a-b-c'.replace('-', '+', 1) }} {{ 'Hi'.upper() }} {{ 'x'.join(['1', '2']) }}"),
            "True True a+b-c HI 1x2");
  EXPECT_EQ(Ok("{{ \"it's\" }} {{ ['it\\'s'] }} {{ 'a' 'b' }}"), "it's [\"it's\"] ab");
}

TEST(Jinja, Filters) {
  EXPECT_EQ(Ok("{{ '  x ' | trim }}|{{ [1, 2] | length }}|{{ 'ab' | upper }}|{{ 'AB' | lower }}|"
               "{{ u | default('d') }}|{{ '' | default('d', true) }}|{{ [3, 4] | first }}|"
               "{{ [3, 4] | last }}|{{ [1, 2] | join(', ') }}|{{ 'aXa' | replace('a', 'b') }}|"
               "{{ 'hello world' | capitalize }}|{{ 'hello world' | title }}|{{ 5 | string }}"),
            "x|2|AB|ab|d|d|3|4|1, 2|bXb|Hello world|Hello World|5");
  EXPECT_EQ(Ok("{% for k, v in {'a': 1, 'b': 2} | items %}{{ k }}={{ v }};{% endfor %}"),
            "a=1;b=2;");
  EXPECT_EQ(Ok("{{ [{'r': 'a'}, {'r': 'b'}, {'r': 'a'}] | selectattr('r', 'equalto', 'a') | list"
               " | length }} {{ [{'n': 1}, {'n': 2}] | map(attribute='n') | join }}"
               " {{ [3, 1, 2] | sort }} {{ [1, 1, 2] | unique | list }} {{ -3 | abs }}"),
            "2 12 [1, 2, 3] [1, 2] 3");
  EXPECT_EQ(Ok("{{ 'a\\nb\\n\\nc' | indent(2) }}"), "a\n  b\n\n  c");
}

TEST(Jinja, ToJsonLikeTransformers) {
  EXPECT_EQ(Ok("{{ {'a': [1, 2.5, none, true], 'b': 'x\"y\\n', 'c': {}} | tojson }}"),
            R"({"a": [1, 2.5, null, true], "b": "x\"y\n", "c": {}})");
  EXPECT_EQ(Ok("{{ {'a': [1, 2]} | tojson(indent=2) }}"), "{\n  \"a\": [\n    1,\n    2\n  ]\n}");
  EXPECT_EQ(Ok("{{ 'caf\xc3\xa9 <b>' | tojson }}"), "\"caf\xc3\xa9 <b>\"");
}

TEST(Jinja, TestsOperator) {
  EXPECT_EQ(Ok("{{ x is defined }} {{ none is none }} {{ 'a' is string }} {{ {} is mapping }}"
               " {{ [1] is sequence }} {{ 1 is not string }} {{ false is false }} {{ 3 is odd }}"
               " {{ 6 is divisibleby 3 }} {{ [] is iterable }} {{ 1.5 is number }}"),
            "False True True True True True True True True True True");
}

TEST(Jinja, LoopsAndScopes) {
  EXPECT_EQ(Ok("{% for x in 'abc' %}{{ loop.index }}{{ x }}{% if not loop.last %},{% endif %}"
               "{% endfor %}"),
            "1a,2b,3c");
  EXPECT_EQ(Ok("{% for x in [1, 2, 3] %}{{ loop.index0 }}{{ loop.first }}{{ loop.length }}"
               "{{ loop.revindex }} {% endfor %}"),
            "0True33 1False32 2False31 ");
  EXPECT_EQ(Ok("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{{ loop.length }}{% endfor %}"),
            "2242");
  EXPECT_EQ(Ok("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(Ok("{% for x in range(10) %}{% if x == 3 %}{% break %}{% endif %}"
               "{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% endfor %}"),
            "02");
  EXPECT_EQ(Ok("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}"), "21");
  EXPECT_EQ(Ok("{% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }}"), "2");
  EXPECT_EQ(Ok("{% set ns = namespace(n=0, s='') %}{% for i in range(4) %}"
               "{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"),
            "6");
  EXPECT_EQ(Ok("{% set a, b = [1, 2] %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(Ok("{% set t %}x{{ 1 + 1 }}{% endset %}[{{ t }}]"), "[x2]");
  EXPECT_EQ(
      Ok("{% macro f(a, b='!') %}{{ a }}{{ b }}{% endmacro %}{{ f('hi') }}{{ f('x', b='?') }}"),
      "hi!x?");
  EXPECT_EQ(Ok("{% for a in [[1, 2], [3, 4]] %}{% for b in a %}{{ loop.index }}{% endfor %}"
               "{{ loop.index }}{% endfor %}"),
            "121122");
}

TEST(Jinja, WhitespaceControl) {
  EXPECT_EQ(Ok("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(Ok("a  {{- 'b' -}}  c"), "abc");
  // trim_blocks removes the newline after a block tag; lstrip_blocks the indentation before it.
  EXPECT_EQ(Ok("<\n  {% if true %}\n  x\n  {% endif %}\n>"), "<\n  x\n>");
  // Neither applies to {{ }}; "+" turns lstrip off.
  EXPECT_EQ(Ok("  {{ 'v' }}\n"), "  v");
  EXPECT_EQ(Ok("<\n  {%+ if true %}x{% endif %}>"), "<\n  x>");
  // One trailing newline of the template is dropped; a comment behaves like a block tag.
  EXPECT_EQ(Ok("a\n\n"), "a\n");
  EXPECT_EQ(Ok("a\n  {# note #}\nb"), "a\nb");
}

TEST(Jinja, ContentMarksFollowTheText) {
  Dict ctx = {{"c", Value::Content("  hi  ")}, {"d", Value::Content("x</think>y")}};
  std::vector<Mark> marks;
  auto r = RenderT("{{ '<' ~ c | trim ~ '>' }}{{ d.split('</think>')[-1] }}{{ 'z' }}", ctx, &marks);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "<hi>yz");
  ASSERT_EQ(marks.size(), 2u);
  EXPECT_EQ(marks[0].offset, 1u);
  EXPECT_EQ(marks[0].length, 2u);
  EXPECT_EQ(marks[1].offset, 4u);
  EXPECT_EQ(marks[1].length, 1u);
}

TEST(Jinja, ErrorsNameThePosition) {
  const auto err = [](const std::string& source, Dict ctx = {}) {
    auto r = RenderT(source, std::move(ctx));
    EXPECT_FALSE(r.ok()) << source << " rendered " << (r.ok() ? *r : "");
    return r.status();
  };
  absl::Status s = err("ab\n{{ x | frobnicate }}");
  EXPECT_TRUE(absl::IsUnimplemented(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("line 2, column"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("frobnicate"));
  s = err("{% include 'x.j2' %}");
  EXPECT_TRUE(absl::IsUnimplemented(s)) << s;
  s = err("{{ x is frobnicated }}");
  EXPECT_TRUE(absl::IsUnimplemented(s)) << s;
  s = err("{{ 'x'.zfill(3) }}");
  EXPECT_TRUE(absl::IsUnimplemented(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("zfill"));
  s = err("{{ x");
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  s = err("{% if x %}never closed");
  EXPECT_THAT(std::string(s.message()), HasSubstr("endif"));
  s = err("{% endfor %}");
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  s = err("{{ 'unterminated }}");
  EXPECT_THAT(std::string(s.message()), HasSubstr("unterminated string"));
  s = err("{{ raise_exception('Roles must alternate') }}");
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("Roles must alternate"));
  s = err("{{ missing.attr }}");
  EXPECT_THAT(std::string(s.message()), HasSubstr("'missing' is undefined"));
  s = err("{{ 'a' + 1 }}");
  EXPECT_THAT(std::string(s.message()), HasSubstr("unsupported operand"));
  s = err("{{ 1 $ 2 }}");
  EXPECT_THAT(std::string(s.message()), HasSubstr("line 1, column 6"));
}

TEST(Jinja, UndefinedRendersEmptyAndIteratesEmpty) {
  EXPECT_EQ(Ok("[{{ nothing }}][{% for x in nothing %}x{% endfor %}][{{ d.missing }}]",
               {{"d", Value::DictOf({})}}),
            "[][][]");
}

}  // namespace
}  // namespace pipeinfer::chat::jinja
