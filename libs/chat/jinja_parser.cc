// The Jinja-subset parser: the template body and its statements ({% if %}, {% for %}, ...), and
// the entry point jinja::Parse. Expressions: jinja_parse_expr.cc.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/jinja_parser.h"

namespace pipeinfer::chat::jinja {
namespace internal {

// Nodes until a "{% name %}" with a name in `ends` (consumed up to and including the name,
// which goes to *found); the end of the template when `ends` is empty.
absl::StatusOr<Body> Parser::ParseBody(std::vector<std::string_view> ends, std::string* found) {
  Body body;
  while (true) {
    const Token& t = Peek();
    if (t.type == Tok::kEof) {
      if (ends.empty()) return body;
      return Error(t.pos, Cat("missing {% ", ends.back(), " %}"));
    }
    if (t.type == Tok::kText) {
      auto n = std::make_unique<Node>();
      n->k = Node::K::kText;
      n->pos = t.pos;
      n->text = t.text;
      body.push_back(std::move(n));
      ++i_;
      continue;
    }
    if (t.type == Tok::kVarBegin) {
      auto n = std::make_unique<Node>();
      n->k = Node::K::kOutput;
      n->pos = t.pos;
      ++i_;
      auto e = ParseTuple();
      if (!e.ok()) return e.status();
      n->expr = std::move(*e);
      if (auto s = Expect(Tok::kVarEnd, "", "'}}'"); !s.ok()) return s;
      body.push_back(std::move(n));
      continue;
    }
    if (t.type != Tok::kBlockBegin) return Error(t.pos, "unexpected " + Describe(t));
    const Token& name = Peek(1);
    if (name.type != Tok::kName) return Error(name.pos, "expected a statement name");
    for (std::string_view e : ends) {
      if (name.text == e) {
        *found = name.text;
        i_ += 2;
        return body;
      }
    }
    auto n = ParseStatement();
    if (!n.ok()) return n.status();
    body.push_back(std::move(*n));
  }
}

absl::StatusOr<NodePtr> Parser::ParseStatement() {
  const size_t pos = Next().pos;  // {%
  const Token& name = Next();
  auto n = std::make_unique<Node>();
  n->pos = pos;
  const std::string& s = name.text;
  if (s == "if") {
    n->k = Node::K::kIf;
    std::string found = "if";
    while (found == "if" || found == "elif") {
      auto cond = ParseTuple();
      if (!cond.ok()) return cond.status();
      if (auto st = EndTag(); !st.ok()) return st;
      auto body = ParseBody({"elif", "else", "endif"}, &found);
      if (!body.ok()) return body.status();
      n->branches.emplace_back(std::move(*cond), std::move(*body));
    }
    if (found == "else") {
      if (auto st = EndTag(); !st.ok()) return st;
      auto body = ParseBody({"endif"}, &found);
      if (!body.ok()) return body.status();
      n->branches.emplace_back(nullptr, std::move(*body));
    }
    if (auto st = EndTag(); !st.ok()) return st;
    return n;
  }
  if (s == "for") {
    n->k = Node::K::kFor;
    do {
      if (Peek().type != Tok::kName) return Error(Peek().pos, "expected a loop variable name");
      n->targets.push_back(Next().text);
    } while (IsOp(",") && (++i_, true));
    if (auto st = Expect(Tok::kName, "in", "'in'"); !st.ok()) return st;
    auto iter = ParseOr();
    if (!iter.ok()) return iter.status();
    n->expr = std::move(*iter);
    if (IsName("if")) {
      ++i_;
      auto f = ParseOr();
      if (!f.ok()) return f.status();
      n->filter = std::move(*f);
    }
    if (IsName("recursive")) return Unsupported(Peek().pos, "recursive for loop");
    if (auto st = EndTag(); !st.ok()) return st;
    std::string found;
    auto body = ParseBody({"else", "endfor"}, &found);
    if (!body.ok()) return body.status();
    n->body = std::move(*body);
    if (found == "else") {
      if (auto st = EndTag(); !st.ok()) return st;
      auto eb = ParseBody({"endfor"}, &found);
      if (!eb.ok()) return eb.status();
      n->else_body = std::move(*eb);
    }
    if (auto st = EndTag(); !st.ok()) return st;
    return n;
  }
  if (s == "set") {
    do {
      if (Peek().type != Tok::kName) return Error(Peek().pos, "expected a variable name");
      n->targets.push_back(Next().text);
    } while (IsOp(",") && (++i_, true));
    if (n->targets.size() == 1 && IsOp(".")) {
      ++i_;
      if (Peek().type != Tok::kName) return Error(Peek().pos, "expected an attribute name");
      n->attr = Next().text;
    }
    if (Peek().type == Tok::kBlockEnd && n->targets.size() == 1 && n->attr.empty()) {
      n->k = Node::K::kSetBlock;
      ++i_;
      std::string found;
      auto body = ParseBody({"endset"}, &found);
      if (!body.ok()) return body.status();
      n->body = std::move(*body);
      if (auto st = EndTag(); !st.ok()) return st;
      return n;
    }
    n->k = Node::K::kSet;
    if (auto st = Expect(Tok::kOp, "=", "'='"); !st.ok()) return st;
    auto value = ParseTuple();
    if (!value.ok()) return value.status();
    n->expr = std::move(*value);
    if (auto st = EndTag(); !st.ok()) return st;
    return n;
  }
  if (s == "macro") {
    n->k = Node::K::kMacro;
    if (Peek().type != Tok::kName) return Error(Peek().pos, "expected a macro name");
    n->text = Next().text;
    if (auto st = Expect(Tok::kOp, "(", "'('"); !st.ok()) return st;
    while (!IsOp(")")) {
      if (Peek().type != Tok::kName) return Error(Peek().pos, "expected a parameter name");
      std::string p = Next().text;
      ExprPtr def;
      if (IsOp("=")) {
        ++i_;
        auto d = ParseExpr();
        if (!d.ok()) return d.status();
        def = std::move(*d);
      }
      n->params.emplace_back(std::move(p), std::move(def));
      if (!IsOp(")")) {
        if (auto st = Expect(Tok::kOp, ",", "',' or ')'"); !st.ok()) return st;
      }
    }
    ++i_;
    if (auto st = EndTag(); !st.ok()) return st;
    std::string found;
    auto body = ParseBody({"endmacro"}, &found);
    if (!body.ok()) return body.status();
    n->body = std::move(*body);
    if (auto st = EndTag(); !st.ok()) return st;
    return n;
  }
  if (s == "break" || s == "continue") {
    n->k = s == "break" ? Node::K::kBreak : Node::K::kContinue;
    if (auto st = EndTag(); !st.ok()) return st;
    return n;
  }
  if (s == "generation") {
    n->k = Node::K::kScope;
    if (auto st = EndTag(); !st.ok()) return st;
    std::string found;
    auto body = ParseBody({"endgeneration"}, &found);
    if (!body.ok()) return body.status();
    n->body = std::move(*body);
    if (auto st = EndTag(); !st.ok()) return st;
    return n;
  }
  static constexpr std::string_view kEnds[] = {"elif",   "else",          "endif",   "endfor",
                                               "endset", "endmacro",      "endcall", "endfilter",
                                               "endraw", "endgeneration", "endblock"};
  for (std::string_view e : kEnds) {
    if (s == e) return Error(name.pos, Cat("unexpected '", s, "'"));
  }
  return Unsupported(name.pos, Cat("statement '", s, "'"));
}

}  // namespace internal

absl::StatusOr<Body> Parse(std::string_view source) {
  auto tokens = Lex(source);
  if (!tokens.ok()) return tokens.status();
  return internal::Parser(source, std::move(*tokens)).Run();
}

}  // namespace pipeinfer::chat::jinja
