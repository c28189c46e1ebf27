// Recursive-descent parser for the Jinja subset, with Jinja's operator precedence (lowest first):
// "x if c else y", or, and, not, comparisons (== != < <= > >= in, not in), + -, ~, * / // %, **,
// unary - +, then primaries with postfixes (.attr, [index], [a:b:c], (call)) and filters / tests
// ("| f(args)", "is [not] t args").
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "chat/jinja_ast.h"

namespace pipeinfer::chat::jinja {
namespace {

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
  absl::StatusOr<Body> ParseBody(std::vector<std::string_view> ends, std::string* found) {
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

  absl::Status EndTag() { return Expect(Tok::kBlockEnd, "", "'%}'"); }

  absl::StatusOr<NodePtr> ParseStatement() {
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

  // expr or an unparenthesized tuple "a, b".
  absl::StatusOr<ExprPtr> ParseTuple() {
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

  absl::StatusOr<ExprPtr> ParseExpr() {
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
  absl::StatusOr<ExprPtr> ParseOr() {
    return Binary(&Parser::ParseAnd, Expr::K::kOr, {"or"}, true);
  }
  absl::StatusOr<ExprPtr> ParseAnd() {
    return Binary(&Parser::ParseNot, Expr::K::kAnd, {"and"}, true);
  }
  absl::StatusOr<ExprPtr> ParseNot() {
    if (!IsName("not")) return ParseCompare();
    const size_t pos = Next().pos;
    auto e = ParseNot();
    if (!e.ok()) return e;
    auto n = Make(Expr::K::kNot, pos);
    n->args.push_back(std::move(*e));
    return n;
  }
  absl::StatusOr<ExprPtr> ParseCompare() {
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
  absl::StatusOr<ExprPtr> ParseMath1() {
    return Binary(&Parser::ParseConcat, Expr::K::kBinary, {"+", "-"}, false);
  }
  absl::StatusOr<ExprPtr> ParseConcat() {
    return Binary(&Parser::ParseMath2, Expr::K::kBinary, {"~"}, false);
  }
  absl::StatusOr<ExprPtr> ParseMath2() {
    return Binary(&Parser::ParsePow, Expr::K::kBinary, {"*", "/", "//", "%"}, false);
  }
  absl::StatusOr<ExprPtr> ParsePow() {
    return Binary(&Parser::ParseUnaryFiltered, Expr::K::kBinary, {"**"}, false);
  }
  absl::StatusOr<ExprPtr> ParseUnaryFiltered() { return ParseUnary(true); }

  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter) {
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

  absl::Status ParseCallArgs(Expr* call) {
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

  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr e) {
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

  absl::StatusOr<std::string> DottedName() {
    if (Peek().type != Tok::kName) return Error(Peek().pos, "expected a name");
    std::string name = Next().text;
    while (IsOp(".") && Peek(1).type == Tok::kName) {
      i_ += 2;
      name += "." + t_[i_ - 1].text;
    }
    return name;
  }

  absl::StatusOr<ExprPtr> ParseFilters(ExprPtr e) {
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

  absl::StatusOr<ExprPtr> ParsePrimary() {
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

  std::string_view src_;
  std::vector<Token> t_;
  size_t i_ = 0;
};

}  // namespace

absl::StatusOr<Body> Parse(std::string_view source) {
  auto tokens = Lex(source);
  if (!tokens.ok()) return tokens.status();
  return Parser(source, std::move(*tokens)).Run();
}

}  // namespace pipeinfer::chat::jinja
