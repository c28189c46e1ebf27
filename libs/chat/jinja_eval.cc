// Evaluator of the Jinja-subset interpreter: walks the syntax tree over jinja::Value.
#include <cmath>
#include <unordered_map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "chat/jinja.h"
#include "chat/jinja_ast.h"
#include "chat/jinja_builtins.h"

namespace pipeinfer::chat::jinja {
namespace {

constexpr size_t kMaxOutput = 64u << 20;  // a runaway template stops here
constexpr int kMaxDepth = 64;             // macro recursion

using Scope = std::unordered_map<std::string, Value>;

class Renderer {
 public:
  Renderer(std::string_view src, std::string* out, std::vector<Mark>* marks)
      : src_(src), out_(out), marks_(marks) {}

  absl::Status Run(const Body& body, const Dict& context) {
    Scope root;
    Dict globals;
    AddGlobals(globals);
    for (auto& [k, v] : globals) root[k] = std::move(v);
    for (const auto& [k, v] : context) root[k] = v;
    scopes_.push_back(std::move(root));
    return ExecBody(body);
  }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  absl::Status Err(size_t pos, std::string_view what,
                   absl::StatusCode code = absl::StatusCode::kInvalidArgument) const {
    return absl::Status(code, Cat("chat template error at ", Where(src_, pos), ": ", what));
  }
  // A builtin's error, with the position of the expression that called it.
  absl::Status At(size_t pos, const absl::Status& s) const {
    if (absl::StartsWith(s.message(), "chat template")) return s;
    return Err(pos, std::string(s.message()), s.code());
  }
  absl::Status Undefined(size_t pos, const Value& v) const {
    return Err(pos,
               v.s.empty() ? std::string("a value is undefined") : Cat("'", v.s, "' is undefined"));
  }

  const Value* Lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return &f->second;
    }
    return nullptr;
  }

  void Emit(const Value& v) {
    if (v.is_undefined()) return;
    if (marks_) {
      AppendMarked(*out_, *marks_, v);
    } else {
      *out_ += v.is_string() ? v.s : ToStr(v);
    }
  }

  absl::Status ExecBody(const Body& body) {
    for (const NodePtr& n : body) {
      if (auto s = Exec(*n); !s.ok()) return s;
      if (out_->size() > kMaxOutput) return Err(n->pos, "the rendering exceeds 64 MiB");
      if (flow_ != Flow::kNormal) break;
    }
    return absl::OkStatus();
  }

  // Renders `body` into a string value (set blocks, macro calls).
  absl::StatusOr<Value> Capture(const Body& body) {
    std::string text;
    std::vector<Mark> marks;
    std::string* saved_out = out_;
    std::vector<Mark>* saved_marks = marks_;
    out_ = &text;
    marks_ = saved_marks ? &marks : nullptr;
    absl::Status s = ExecBody(body);
    out_ = saved_out;
    marks_ = saved_marks;
    if (!s.ok()) return s;
    return Value::Str(std::move(text), std::move(marks));
  }

  absl::Status Assign(size_t pos, const std::vector<std::string>& targets, Value v, Scope& scope) {
    if (targets.size() == 1) {
      scope[targets[0]] = std::move(v);
      return absl::OkStatus();
    }
    if (v.kind != Kind::kList || v.list->size() != targets.size()) {
      return Err(pos,
                 Cat("cannot unpack a ", KindName(v.kind), " into ", targets.size(), " names"));
    }
    for (size_t i = 0; i < targets.size(); ++i) scope[targets[i]] = (*v.list)[i];
    return absl::OkStatus();
  }

  absl::Status Exec(const Node& n) {
    switch (n.k) {
      case Node::K::kText:
        *out_ += n.text;
        return absl::OkStatus();
      case Node::K::kOutput: {
        auto v = Eval(*n.expr);
        if (!v.ok()) return v.status();
        Emit(*v);
        return absl::OkStatus();
      }
      case Node::K::kIf:
        for (const auto& [cond, body] : n.branches) {
          bool take = true;
          if (cond) {
            auto c = Eval(*cond);
            if (!c.ok()) return c.status();
            take = Truthy(*c);
          }
          if (take) return ExecBody(body);
        }
        return absl::OkStatus();
      case Node::K::kFor:
        return ExecFor(n);
      case Node::K::kSet: {
        auto v = Eval(*n.expr);
        if (!v.ok()) return v.status();
        if (n.attr.empty()) return Assign(n.pos, n.targets, std::move(*v), scopes_.back());
        const Value* ns = Lookup(n.targets[0]);
        if (!ns || ns->kind != Kind::kNamespace) {
          return Err(n.pos, Cat("cannot set attribute '", n.attr, "' of '", n.targets[0],
                                "': it is not a namespace()"));
        }
        Value shared = *ns;  // the copy shares the namespace's dict
        shared.Set(n.attr, std::move(*v));
        return absl::OkStatus();
      }
      case Node::K::kSetBlock: {
        auto v = Capture(n.body);
        if (!v.ok()) return v.status();
        scopes_.back()[n.targets[0]] = std::move(*v);
        return absl::OkStatus();
      }
      case Node::K::kMacro:
        scopes_.back()[n.text] = MakeMacro(n);
        return absl::OkStatus();
      case Node::K::kBreak:
        flow_ = Flow::kBreak;
        return absl::OkStatus();
      case Node::K::kContinue:
        flow_ = Flow::kContinue;
        return absl::OkStatus();
      case Node::K::kScope:
        return ExecBody(n.body);
    }
    return absl::OkStatus();
  }

  absl::Status ExecFor(const Node& n) {
    auto iterable = Eval(*n.expr);
    if (!iterable.ok()) return iterable.status();
    auto items = Iterate(*iterable);
    if (!items.ok()) return At(n.expr->pos, items.status());
    if (n.filter) {
      List kept;
      for (Value& item : *items) {
        Scope scope;
        if (auto s = Assign(n.pos, n.targets, item, scope); !s.ok()) return s;
        scopes_.push_back(std::move(scope));
        auto keep = Eval(*n.filter);
        scopes_.pop_back();
        if (!keep.ok()) return keep.status();
        if (Truthy(*keep)) kept.push_back(std::move(item));
      }
      *items = std::move(kept);
    }
    const List& list = *items;
    const int64_t len = static_cast<int64_t>(list.size());
    for (int64_t i = 0; i < len; ++i) {
      Scope scope;
      if (auto s = Assign(n.pos, n.targets, list[i], scope); !s.ok()) return s;
      Dict loop = {{"index", Value::Int(i + 1)},
                   {"index0", Value::Int(i)},
                   {"revindex", Value::Int(len - i)},
                   {"revindex0", Value::Int(len - i - 1)},
                   {"first", Value::Bool(i == 0)},
                   {"last", Value::Bool(i == len - 1)},
                   {"length", Value::Int(len)},
                   {"depth", Value::Int(1)},
                   {"depth0", Value::Int(0)},
                   {"previtem", i > 0 ? list[i - 1] : Value::Undefined("loop.previtem")},
                   {"nextitem", i + 1 < len ? list[i + 1] : Value::Undefined("loop.nextitem")}};
      loop.emplace_back(
          "cycle", Value::Callable([i](std::vector<Value>& args, Kwargs&) -> absl::StatusOr<Value> {
            if (args.empty()) return absl::InvalidArgumentError("loop.cycle() needs arguments");
            return args[static_cast<size_t>(i) % args.size()];
          }));
      scope["loop"] = Value::DictOf(std::move(loop));
      scopes_.push_back(std::move(scope));
      absl::Status s = ExecBody(n.body);
      scopes_.pop_back();
      if (!s.ok()) return s;
      const Flow f = flow_;
      flow_ = Flow::kNormal;
      if (f == Flow::kBreak) break;
    }
    if (list.empty() && !n.else_body.empty()) return ExecBody(n.else_body);
    return absl::OkStatus();
  }

  Value MakeMacro(const Node& n) {
    const Node* node = &n;
    return Value::Callable(
        [this, node](std::vector<Value>& args, Kwargs& kwargs) -> absl::StatusOr<Value> {
          if (args.size() > node->params.size()) {
            return absl::InvalidArgumentError(
                Cat("macro '", node->text, "' takes ", node->params.size(), " arguments"));
          }
          if (depth_ >= kMaxDepth) return absl::InvalidArgumentError("macro recursion too deep");
          Scope scope;
          for (size_t i = 0; i < node->params.size(); ++i) {
            const auto& [name, def] = node->params[i];
            const Value* kw = nullptr;
            for (const auto& [k, v] : kwargs) {
              if (k == name) kw = &v;
            }
            if (i < args.size()) {
              scope[name] = args[i];
            } else if (kw) {
              scope[name] = *kw;
            } else if (def) {
              auto d = Eval(*def);
              if (!d.ok()) return d.status();
              scope[name] = std::move(*d);
            } else {
              scope[name] = Value::Undefined(name);
            }
          }
          // A macro sees the template's top-level names and its parameters.
          std::vector<Scope> saved = std::move(scopes_);
          scopes_ = {saved.front(), std::move(scope)};
          ++depth_;
          auto v = Capture(node->body);
          --depth_;
          scopes_ = std::move(saved);
          flow_ = Flow::kNormal;
          return v;
        });
  }

  absl::StatusOr<std::vector<Value>> EvalArgs(const Expr& e, size_t first, Kwargs* kwargs) {
    std::vector<Value> args;
    for (size_t i = first; i < e.args.size(); ++i) {
      auto v = Eval(*e.args[i]);
      if (!v.ok()) return v.status();
      args.push_back(std::move(*v));
    }
    for (const auto& [k, x] : e.kwargs) {
      auto v = Eval(*x);
      if (!v.ok()) return v.status();
      kwargs->emplace_back(k, std::move(*v));
    }
    return args;
  }

  absl::StatusOr<Value> EvalCall(const Expr& e) {
    Kwargs kwargs;
    const Expr& callee = *e.args[0];
    if (callee.k == Expr::K::kAttr) {
      auto obj = Eval(*callee.args[0]);
      if (!obj.ok()) return obj.status();
      if (obj->is_undefined()) return Undefined(callee.pos, *obj);
      if (obj->kind != Kind::kNamespace && obj->kind != Kind::kCallable) {
        const Value* member = obj->Find(callee.name);
        if (!member || member->kind != Kind::kCallable) {
          auto args = EvalArgs(e, 1, &kwargs);
          if (!args.ok()) return args.status();
          auto r = CallMethod(*obj, callee.name, *args, kwargs);
          if (r.ok()) return r;
          if (absl::IsNotFound(r.status())) {
            return Err(callee.pos,
                       Cat("unsupported method '", callee.name, "' of a ", KindName(obj->kind)),
                       absl::StatusCode::kUnimplemented);
          }
          return At(callee.pos, r.status());
        }
      }
    }
    auto fn = Eval(callee);
    if (!fn.ok()) return fn.status();
    if (fn->is_undefined()) {
      return Err(callee.pos, Cat("'", fn->s, "' is undefined (no such function)"),
                 absl::StatusCode::kUnimplemented);
    }
    if (fn->kind != Kind::kCallable) {
      return Err(callee.pos, Cat("a ", KindName(fn->kind), " is not callable"));
    }
    auto args = EvalArgs(e, 1, &kwargs);
    if (!args.ok()) return args.status();
    auto r = (*fn->function)(*args, kwargs);
    if (!r.ok()) return At(e.pos, r.status());
    return r;
  }

  absl::StatusOr<Value> Arith(const Expr& e, const Value& a, const Value& b) {
    const std::string& op = e.name;
    if (op == "~") {
      Value out = Value::Str("");
      AppendMarked(out.s, out.marks, a);
      AppendMarked(out.s, out.marks, b);
      return out;
    }
    if (a.is_undefined()) return Undefined(e.args[0]->pos, a);
    if (b.is_undefined()) return Undefined(e.args[1]->pos, b);
    const auto is_num = [](const Value& v) { return v.is_number() || v.kind == Kind::kBool; };
    if (op == "+" && a.is_string() && b.is_string()) {
      Value out = a;
      AppendMarked(out.s, out.marks, b);
      return out;
    }
    if (op == "+" && a.kind == Kind::kList && b.kind == Kind::kList) {
      List l = *a.list;
      l.insert(l.end(), b.list->begin(), b.list->end());
      return Value::ListOf(std::move(l));
    }
    if (op == "*" && (a.is_string() || a.kind == Kind::kList) && b.kind == Kind::kInt) {
      Value out = a.is_string() ? Value::Str("") : Value::ListOf({});
      for (int64_t i = 0; i < b.i && i < (1 << 20); ++i) {
        if (a.is_string()) {
          AppendMarked(out.s, out.marks, a);
        } else {
          out.list->insert(out.list->end(), a.list->begin(), a.list->end());
        }
      }
      return out;
    }
    if (is_num(a) && is_num(b)) {
      const int64_t ai = a.kind == Kind::kBool ? a.b : a.i;
      const int64_t bi = b.kind == Kind::kBool ? b.b : b.i;
      const bool ints = a.kind != Kind::kFloat && b.kind != Kind::kFloat;
      const double x = a.kind == Kind::kFloat ? a.f : static_cast<double>(ai);
      const double y = b.kind == Kind::kFloat ? b.f : static_cast<double>(bi);
      if (op == "+") return ints ? Value::Int(ai + bi) : Value::Float(x + y);
      if (op == "-") return ints ? Value::Int(ai - bi) : Value::Float(x - y);
      if (op == "*") return ints ? Value::Int(ai * bi) : Value::Float(x * y);
      if (op == "**") {
        if (ints && bi >= 0) return Value::Int(static_cast<int64_t>(std::llround(std::pow(x, y))));
        return Value::Float(std::pow(x, y));
      }
      if (y == 0) return Err(e.pos, "division by zero");
      if (op == "/") return Value::Float(x / y);
      if (op == "//") {
        if (ints) {
          int64_t q = ai / bi;
          if ((ai % bi != 0) && ((ai < 0) != (bi < 0))) --q;
          return Value::Int(q);
        }
        return Value::Float(std::floor(x / y));
      }
      if (op == "%") {
        if (ints) {
          int64_t r = ai % bi;
          if (r != 0 && ((r < 0) != (bi < 0))) r += bi;
          return Value::Int(r);
        }
        const double r = std::fmod(x, y);
        return Value::Float(r != 0 && ((r < 0) != (y < 0)) ? r + y : r);
      }
    }
    return Err(e.pos, Cat("unsupported operand types for ", op, ": ", KindName(a.kind), " and ",
                          KindName(b.kind)));
  }

  absl::StatusOr<bool> Compare(const Expr& e, const std::string& op, const Value& a,
                               const Value& b) {
    if (op == "==") return Equal(a, b);
    if (op == "!=") return !Equal(a, b);
    if (op == "in" || op == "notin") {
      auto r = Contains(b, a);
      if (!r.ok()) return At(e.pos, r.status());
      return op == "in" ? *r : !*r;
    }
    absl::StatusOr<bool> r = false;
    if (op == "<") r = Less(a, b);
    if (op == ">") r = Less(b, a);
    if (op == "<=") {
      r = Less(b, a);
      if (r.ok()) r = !*r;
    }
    if (op == ">=") {
      r = Less(a, b);
      if (r.ok()) r = !*r;
    }
    if (!r.ok()) return At(e.pos, r.status());
    return r;
  }

 public:
  absl::StatusOr<Value> Eval(const Expr& e) {
    switch (e.k) {
      case Expr::K::kLiteral:
        return e.literal;
      case Expr::K::kName: {
        const Value* v = Lookup(e.name);
        return v ? *v : Value::Undefined(e.name);
      }
      case Expr::K::kList:
      case Expr::K::kTuple: {
        Kwargs unused;
        auto items = EvalArgs(e, 0, &unused);
        if (!items.ok()) return items.status();
        return Value::ListOf(std::move(*items));
      }
      case Expr::K::kDict: {
        Value d = Value::DictOf({});
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          auto k = Eval(*e.args[i]);
          if (!k.ok()) return k.status();
          if (!k->is_string()) return Err(e.args[i]->pos, "dict keys must be strings");
          auto v = Eval(*e.args[i + 1]);
          if (!v.ok()) return v.status();
          d.Set(k->s, std::move(*v));
        }
        return d;
      }
      case Expr::K::kAttr:
      case Expr::K::kItem: {
        auto obj = Eval(*e.args[0]);
        if (!obj.ok()) return obj.status();
        if (obj->is_undefined()) return Undefined(e.args[0]->pos, *obj);
        if (e.k == Expr::K::kAttr) {
          const Value* v = obj->Find(e.name);
          return v ? *v : Value::Undefined(e.name);
        }
        auto key = Eval(*e.args[1]);
        if (!key.ok()) return key.status();
        return GetItem(*obj, *key);
      }
      case Expr::K::kSlice: {
        auto obj = Eval(*e.args[0]);
        if (!obj.ok()) return obj.status();
        if (obj->is_undefined()) return Undefined(e.args[0]->pos, *obj);
        Value parts[3];
        const Value* p[3] = {nullptr, nullptr, nullptr};
        for (int i = 0; i < 3; ++i) {
          if (!e.args[i + 1]) continue;
          auto v = Eval(*e.args[i + 1]);
          if (!v.ok()) return v.status();
          parts[i] = std::move(*v);
          p[i] = &parts[i];
        }
        auto r = Slice(*obj, p[0], p[1], p[2]);
        if (!r.ok()) return At(e.pos, r.status());
        return r;
      }
      case Expr::K::kCall:
        return EvalCall(e);
      case Expr::K::kFilter:
      case Expr::K::kTest: {
        auto subject = Eval(*e.args[0]);
        if (!subject.ok()) return subject.status();
        Kwargs kwargs;
        auto args = EvalArgs(e, 1, &kwargs);
        if (!args.ok()) return args.status();
        if (e.k == Expr::K::kTest) {
          auto r = ApplyTest(e.name, *subject, *args);
          if (!r.ok()) return At(e.pos, r.status());
          return Value::Bool(*r != e.negated);
        }
        auto r = ApplyFilter(e.name, *subject, *args, kwargs);
        if (!r.ok()) return At(e.pos, r.status());
        return r;
      }
      case Expr::K::kNeg:
      case Expr::K::kPos: {
        auto v = Eval(*e.args[0]);
        if (!v.ok()) return v.status();
        if (e.k == Expr::K::kPos && v->is_number()) return v;
        if (v->kind == Kind::kInt) return Value::Int(-v->i);
        if (v->kind == Kind::kFloat) return Value::Float(-v->f);
        return Err(e.pos, Cat("bad operand type for unary minus: ", KindName(v->kind)));
      }
      case Expr::K::kNot: {
        auto v = Eval(*e.args[0]);
        if (!v.ok()) return v.status();
        return Value::Bool(!Truthy(*v));
      }
      case Expr::K::kAnd:
      case Expr::K::kOr: {
        auto a = Eval(*e.args[0]);
        if (!a.ok()) return a.status();
        if (Truthy(*a) == (e.k == Expr::K::kOr)) return a;
        return Eval(*e.args[1]);
      }
      case Expr::K::kBinary: {
        auto a = Eval(*e.args[0]);
        if (!a.ok()) return a.status();
        auto b = Eval(*e.args[1]);
        if (!b.ok()) return b.status();
        return Arith(e, *a, *b);
      }
      case Expr::K::kCompare: {
        auto left = Eval(*e.args[0]);
        if (!left.ok()) return left.status();
        for (size_t i = 0; i < e.ops.size(); ++i) {
          auto right = Eval(*e.args[i + 1]);
          if (!right.ok()) return right.status();
          auto r = Compare(e, e.ops[i], *left, *right);
          if (!r.ok()) return r.status();
          if (!*r) return Value::Bool(false);
          left = std::move(right);
        }
        return Value::Bool(true);
      }
      case Expr::K::kCond: {
        auto c = Eval(*e.args[0]);
        if (!c.ok()) return c.status();
        if (Truthy(*c)) return Eval(*e.args[1]);
        if (e.args[2]) return Eval(*e.args[2]);
        return Value::Undefined();
      }
    }
    return Err(e.pos, "unknown expression");
  }

 private:
  std::string_view src_;
  std::string* out_;
  std::vector<Mark>* marks_;
  std::vector<Scope> scopes_;
  Flow flow_ = Flow::kNormal;
  int depth_ = 0;
};

}  // namespace

absl::StatusOr<Template> Template::Parse(std::string source) {
  auto src = std::make_shared<const std::string>(std::move(source));
  auto body = jinja::Parse(*src);
  if (!body.ok()) return body.status();
  Template t;
  t.source_ = std::move(src);
  t.body_ = std::make_shared<const Body>(std::move(*body));
  return t;
}

absl::StatusOr<std::string> Template::Render(const Dict& context, std::vector<Mark>* marks) const {
  std::string out;
  std::vector<Mark> m;
  Renderer r(*source_, &out, marks ? &m : nullptr);
  absl::Status s = r.Run(*body_, context);
  if (!s.ok()) return s;
  if (marks) {
    marks->clear();
    for (const Mark& x : m) {
      if (x.length == 0) continue;
      if (!marks->empty() && marks->back().offset + marks->back().length == x.offset) {
        marks->back().length += x.length;  // adjacent ranges merge
      } else {
        marks->push_back(x);
      }
    }
  }
  return out;
}

}  // namespace pipeinfer::chat::jinja
