// The Jinja-subset parser's expressions, by precedence level (see jinja_parser.h).
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/jinja_parser.h"

namespace pipeinfer::chat::jinja::internal {

// expr or an unparenthesized tuple "a, b".
absl::StatusOr<ExprPtr> Parser::ParseTuple() {
  const size_t pos = Peek().pos;
  auto first = ParseExpr();
  if (!first.ok() || !IsOp(",")) return first;
  auto t = Make(Expr::K::kTuple, pos);
  t->args.push_back(std::move(*first));
  while (IsOp(",")) {
    ++i_;
    if (Peek().type == Tok::kVarEnd || Peek().type == Tok::kBlockEnd) break;
    auto e = ParseExpr();
    if (!e.ok()) return e.status();
    t->args.push_back(std::move(*e));
  }
  return t;
}

absl::StatusOr<ExprPtr> Parser::ParseExpr() {
  auto e = ParseOr();
  if (!e.ok()) return e;
  while (IsName("if")) {
    const size_t pos = Next().pos;
    auto cond = ParseOr();
    if (!cond.ok()) return cond;
    auto c = Make(Expr::K::kCond, pos);
    c->args.push_back(std::move(*cond));
    c->args.push_back(std::move(*e));
    if (IsName("else")) {
      ++i_;
      auto other = ParseExpr();
      if (!other.ok()) return other;
      c->args.push_back(std::move(*other));
    } else {
      c->args.push_back(nullptr);
    }
    e = std::move(c);
  }
  return e;
}

absl::StatusOr<ExprPtr> Parser::ParseOr() {
  return Binary(&Parser::ParseAnd, Expr::K::kOr, {"or"}, true);
}

absl::StatusOr<ExprPtr> Parser::ParseAnd() {
  return Binary(&Parser::ParseNot, Expr::K::kAnd, {"and"}, true);
}

absl::StatusOr<ExprPtr> Parser::ParseNot() {
  if (!IsName("not")) return ParseCompare();
  const size_t pos = Next().pos;
  auto e = ParseNot();
  if (!e.ok()) return e;
  auto n = Make(Expr::K::kNot, pos);
  n->args.push_back(std::move(*e));
  return n;
}

absl::StatusOr<ExprPtr> Parser::ParseCompare() {
  const size_t pos = Peek().pos;
  auto first = ParseMath1();
  if (!first.ok()) return first;
  ExprPtr c;
  while (true) {
    std::string op;
    for (std::string_view o : {"==", "!=", "<", "<=", ">", ">="}) {
      if (IsOp(o)) op = std::string(o);
    }
    if (op.empty() && IsName("in")) op = "in";
    if (op.empty() && IsName("not") && IsName("in", 1)) {
      op = "notin";
      ++i_;
    }
    if (op.empty()) break;
    ++i_;
    auto right = ParseMath1();
    if (!right.ok()) return right;
    if (!c) {
      c = Make(Expr::K::kCompare, pos);
      c->args.push_back(std::move(*first));
    }
    c->ops.push_back(op);
    c->args.push_back(std::move(*right));
  }
  if (!c) return first;
  return c;
}

absl::StatusOr<ExprPtr> Parser::ParseMath1() {
  return Binary(&Parser::ParseConcat, Expr::K::kBinary, {"+", "-"}, false);
}

absl::StatusOr<ExprPtr> Parser::ParseConcat() {
  return Binary(&Parser::ParseMath2, Expr::K::kBinary, {"~"}, false);
}

absl::StatusOr<ExprPtr> Parser::ParseMath2() {
  return Binary(&Parser::ParsePow, Expr::K::kBinary, {"*", "/", "//", "%"}, false);
}

absl::StatusOr<ExprPtr> Parser::ParsePow() {
  return Binary(&Parser::ParseUnaryFiltered, Expr::K::kBinary, {"**"}, false);
}

absl::StatusOr<ExprPtr> Parser::ParseUnary(bool with_filter) {
  absl::StatusOr<ExprPtr> e;
  if (IsOp("-") || IsOp("+")) {
    const Token& t = Next();
    auto operand = ParseUnary(false);
    if (!operand.ok()) return operand;
    auto u = Make(t.text == "-" ? Expr::K::kNeg : Expr::K::kPos, t.pos);
    u->args.push_back(std::move(*operand));
    e = std::move(u);
  } else {
    e = ParsePrimary();
  }
  if (!e.ok()) return e;
  e = ParsePostfix(std::move(*e));
  if (!e.ok() || !with_filter) return e;
  return ParseFilters(std::move(*e));
}

absl::Status Parser::ParseCallArgs(Expr* call) {
  ++i_;  // (
  while (!IsOp(")")) {
    if (Peek().type == Tok::kName && IsOp("=", 1)) {
      std::string key = Next().text;
      ++i_;
      auto v = ParseExpr();
      if (!v.ok()) return v.status();
      call->kwargs.emplace_back(std::move(key), std::move(*v));
    } else {
      auto v = ParseExpr();
      if (!v.ok()) return v.status();
      call->args.push_back(std::move(*v));
    }
    if (!IsOp(")")) {
      if (auto st = Expect(Tok::kOp, ",", "',' or ')'"); !st.ok()) return st;
    }
  }
  ++i_;
  return absl::OkStatus();
}

absl::StatusOr<ExprPtr> Parser::ParsePostfix(ExprPtr e) {
  while (true) {
    if (IsOp(".")) {
      const size_t pos = Next().pos;
      const Token& t = Next();
      if (t.type == Tok::kName) {
        auto a = Make(Expr::K::kAttr, pos);
        a->name = t.text;
        a->args.push_back(std::move(e));
        e = std::move(a);
      } else if (t.type == Tok::kInt) {
        auto it = Make(Expr::K::kItem, pos);
        it->args.push_back(std::move(e));
        auto idx = Make(Expr::K::kLiteral, t.pos);
        idx->literal = Value::Int(t.i);
        it->args.push_back(std::move(idx));
        e = std::move(it);
      } else {
        return Error(t.pos, "expected an attribute name after '.'");
      }
    } else if (IsOp("[")) {
      const size_t pos = Next().pos;
      ExprPtr parts[3];
      int n = 0;
      bool slice = false;
      while (true) {
        if (!IsOp(":") && !IsOp("]")) {
          auto x = ParseExpr();
          if (!x.ok()) return x;
          parts[n] = std::move(*x);
        }
        if (IsOp(":") && n < 2) {
          slice = true;
          ++n;
          ++i_;
          continue;
        }
        break;
      }
      if (auto st = Expect(Tok::kOp, "]", "']'"); !st.ok()) return st;
      if (!slice && !parts[0]) return Error(pos, "empty subscript");
      auto s = Make(slice ? Expr::K::kSlice : Expr::K::kItem, pos);
      s->args.push_back(std::move(e));
      s->args.push_back(std::move(parts[0]));
      if (slice) {
        s->args.push_back(std::move(parts[1]));
        s->args.push_back(std::move(parts[2]));
      }
      e = std::move(s);
    } else if (IsOp("(")) {
      auto c = Make(Expr::K::kCall, Peek().pos);
      c->args.push_back(std::move(e));
      if (auto st = ParseCallArgs(c.get()); !st.ok()) return st;
      e = std::move(c);
    } else {
      return e;
    }
  }
}

absl::StatusOr<std::string> Parser::DottedName() {
  if (Peek().type != Tok::kName) return Error(Peek().pos, "expected a name");
  std::string name = Next().text;
  while (IsOp(".") && Peek(1).type == Tok::kName) {
    i_ += 2;
    name += "." + t_[i_ - 1].text;
  }
  return name;
}

absl::StatusOr<ExprPtr> Parser::ParseFilters(ExprPtr e) {
  while (true) {
    if (IsOp("|")) {
      const size_t pos = Next().pos;
      auto name = DottedName();
      if (!name.ok()) return name.status();
      if (!IsKnownFilter(*name)) return Unsupported(pos + 1, Cat("filter '", *name, "'"));
      auto f = Make(Expr::K::kFilter, pos);
      f->name = *name;
      f->args.push_back(std::move(e));
      if (IsOp("(")) {
        if (auto st = ParseCallArgs(f.get()); !st.ok()) return st;
      }
      e = std::move(f);
    } else if (IsName("is")) {
      const size_t pos = Next().pos;
      auto t = Make(Expr::K::kTest, pos);
      if (IsName("not")) {
        t->negated = true;
        ++i_;
      }
      auto name = DottedName();
      if (!name.ok()) return name.status();
      if (!IsKnownTest(*name)) return Unsupported(pos, Cat("test '", *name, "'"));
      t->name = *name;
      t->args.push_back(std::move(e));
      if (IsOp("(")) {
        if (auto st = ParseCallArgs(t.get()); !st.ok()) return st;
      } else {
        const Token& a = Peek();
        const bool arg_start =
            a.type == Tok::kString || a.type == Tok::kInt || a.type == Tok::kFloat || IsOp("[") ||
            IsOp("{") ||
            (a.type == Tok::kName && a.text != "else" && a.text != "or" && a.text != "and" &&
             a.text != "if" && a.text != "in" && a.text != "is" && a.text != "not");
        if (arg_start) {
          auto arg = ParsePrimary();
          if (!arg.ok()) return arg;
          arg = ParsePostfix(std::move(*arg));
          if (!arg.ok()) return arg;
          t->args.push_back(std::move(*arg));
        }
      }
      e = std::move(t);
    } else {
      return e;
    }
  }
}

absl::StatusOr<ExprPtr> Parser::ParsePrimary() {
  const Token& t = Peek();
  auto lit = [&](Value v) {
    auto e = Make(Expr::K::kLiteral, t.pos);
    e->literal = std::move(v);
    return e;
  };
  switch (t.type) {
    case Tok::kName: {
      ++i_;
      if (t.text == "true" || t.text == "True") return lit(Value::Bool(true));
      if (t.text == "false" || t.text == "False") return lit(Value::Bool(false));
      if (t.text == "none" || t.text == "None") return lit(Value::None());
      auto e = Make(Expr::K::kName, t.pos);
      e->name = t.text;
      return e;
    }
    case Tok::kString: {
      std::string s;
      const size_t pos = t.pos;
      while (Peek().type == Tok::kString) s += Next().text;  // adjacent literals concatenate
      auto e = Make(Expr::K::kLiteral, pos);
      e->literal = Value::Str(std::move(s));
      return e;
    }
    case Tok::kInt:
      ++i_;
      return lit(Value::Int(t.i));
    case Tok::kFloat:
      ++i_;
      return lit(Value::Float(t.f));
    case Tok::kOp:
      if (t.text == "(") {
        const size_t pos = Next().pos;
        if (IsOp(")")) {
          ++i_;
          return Make(Expr::K::kTuple, pos);
        }
        auto e = ParseTuple();
        if (!e.ok()) return e;
        if (auto st = Expect(Tok::kOp, ")", "')'"); !st.ok()) return st;
        return e;
      }
      if (t.text == "[" || t.text == "{") {
        const bool dict = t.text == "{";
        const char* close = dict ? "}" : "]";
        auto e = Make(dict ? Expr::K::kDict : Expr::K::kList, Next().pos);
        while (!IsOp(close)) {
          auto item = ParseExpr();
          if (!item.ok()) return item;
          e->args.push_back(std::move(*item));
          if (dict) {
            if (auto st = Expect(Tok::kOp, ":", "':'"); !st.ok()) return st;
            auto v = ParseExpr();
            if (!v.ok()) return v;
            e->args.push_back(std::move(*v));
          }
          if (!IsOp(close)) {
            if (auto st = Expect(Tok::kOp, ",", Cat("',' or '", close, "'")); !st.ok()) {
              return st;
            }
          }
        }
        ++i_;
        return e;
      }
      break;
    default:
      break;
  }
  return Error(t.pos, Cat("unexpected ", Describe(t)));
}

}  // namespace pipeinfer::chat::jinja::internal
