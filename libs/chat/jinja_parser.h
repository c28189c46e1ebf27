// Internal to libs/chat: the recursive-descent parser of the Jinja subset. Statements and the
// template body are parsed in jinja_parser.cc, expressions in jinja_parse_expr.cc. Callers use
// jinja::Parse (jinja_ast.h).
//
// Jinja's operator precedence (lowest first): "x if c else y", or, and, not, comparisons
// (== != < <= > >= in, not in), + -, ~, * / // %, **, unary - +, then primaries with postfixes
// (.attr, [index], [a:b:c], (call)) and filters / tests ("| f(args)", "is [not] t args").
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "chat/jinja_ast.h"

namespace pipeinfer::chat::jinja::internal {

class Parser {
 public:
  Parser(std::string_view src, std::vector<Token> tokens) : src_(src), t_(std::move(tokens)) {}

  absl::StatusOr<Body> Run() {
    std::string end;
    auto body = ParseBody({}, &end);
    if (!body.ok()) return body.status();
    return std::move(*body);
  }

 private:
  const Token& Peek(size_t k = 0) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  const Token& Next() { return t_[std::min(i_++, t_.size() - 1)]; }
  bool IsOp(std::string_view op, size_t k = 0) const {
    return Peek(k).type == Tok::kOp && Peek(k).text == op;
  }
  bool IsName(std::string_view name, size_t k = 0) const {
    return Peek(k).type == Tok::kName && Peek(k).text == name;
  }

  absl::Status Error(size_t pos, std::string_view what) const {
    return absl::InvalidArgumentError(
        Cat("chat template syntax error at ", Where(src_, pos), ": ", what));
  }
  absl::Status Unsupported(size_t pos, std::string_view what) const {
    return absl::UnimplementedError(
        Cat("chat template at ", Where(src_, pos), ": unsupported ", what));
  }
  static std::string Describe(const Token& t) {
    switch (t.type) {
      case Tok::kEof:
        return "end of template";
      case Tok::kText:
        return "text";
      case Tok::kVarBegin:
        return "'{{'";
      case Tok::kVarEnd:
        return "'}}'";
      case Tok::kBlockBegin:
        return "'{%'";
      case Tok::kBlockEnd:
        return "'%}'";
      case Tok::kString:
        return "a string";
      default:
        return Cat("'", t.text, "'");
    }
  }
  absl::Status Expect(Tok type, std::string_view text, std::string_view what) {
    const Token& t = Peek();
    if (t.type != type || (!text.empty() && t.text != text)) {
      return Error(t.pos, Cat("expected ", what, ", found ", Describe(t)));
    }
    ++i_;
    return absl::OkStatus();
  }

  static ExprPtr Make(Expr::K k, size_t pos) {
    auto e = std::make_unique<Expr>();
    e->k = k;
    e->pos = pos;
    return e;
  }

  // Nodes until a "{% name %}" with a name in `ends` (consumed up to and including the name,
  // which goes to *found); the end of the template when `ends` is empty.
  absl::StatusOr<Body> ParseBody(std::vector<std::string_view> ends, std::string* found);

  absl::Status EndTag() { return Expect(Tok::kBlockEnd, "", "'%}'"); }

  absl::StatusOr<NodePtr> ParseStatement();

  // expr or an unparenthesized tuple "a, b".
  absl::StatusOr<ExprPtr> ParseTuple();
  absl::StatusOr<ExprPtr> ParseExpr();
  using Level = absl::StatusOr<ExprPtr> (Parser::*)();
  absl::StatusOr<ExprPtr> Binary(Level next, Expr::K k, std::vector<std::string_view> ops,
                                 bool names) {
    auto left = (this->*next)();
    if (!left.ok()) return left;
    while (true) {
      std::string op;
      for (std::string_view o : ops) {
        if (names ? IsName(o) : IsOp(o)) op = std::string(o);
      }
      if (op.empty()) return left;
      const size_t pos = Next().pos;
      auto right = (this->*next)();
      if (!right.ok()) return right;
      auto b = Make(k, pos);
      b->name = op;
      b->args.push_back(std::move(*left));
      b->args.push_back(std::move(*right));
      left = std::move(b);
    }
  }
  absl::StatusOr<ExprPtr> ParseOr();
  absl::StatusOr<ExprPtr> ParseAnd();
  absl::StatusOr<ExprPtr> ParseNot();
  absl::StatusOr<ExprPtr> ParseCompare();
  absl::StatusOr<ExprPtr> ParseMath1();
  absl::StatusOr<ExprPtr> ParseConcat();
  absl::StatusOr<ExprPtr> ParseMath2();
  absl::StatusOr<ExprPtr> ParsePow();
  absl::StatusOr<ExprPtr> ParseUnaryFiltered() { return ParseUnary(true); }
  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter);
  absl::Status ParseCallArgs(Expr* call);
  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr e);
  absl::StatusOr<std::string> DottedName();
  absl::StatusOr<ExprPtr> ParseFilters(ExprPtr e);
  absl::StatusOr<ExprPtr> ParsePrimary();

  std::string_view src_;
  std::vector<Token> t_;
  size_t i_ = 0;
};

}  // namespace pipeinfer::chat::jinja::internal
