// Tokens and syntax tree of the Jinja-subset interpreter (internal to libs/chat; see jinja.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "chat/jinja_value.h"

namespace pipeinfer::chat::jinja {

// ---- Lexer ----------------------------------------------------------------------------------

enum class Tok {
  kText,        // template text between tags (whitespace control already applied)
  kVarBegin,    // {{
  kVarEnd,      // }}
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kName,
  kString,
  kInt,
  kFloat,
  kOp,  // operator or punctuation: + - * / // % ** ~ == != < <= > >= = ( ) [ ] { } . , : |
  kEof,
};

struct Token {
  Tok type = Tok::kEof;
  std::string text;  // text, name, unescaped string, operator
  int64_t i = 0;
  double f = 0;
  size_t pos = 0;  // byte offset in the template source
};

// Splits a template into tokens, applying Hugging Face's settings (trim_blocks, lstrip_blocks,
// a single trailing newline dropped) and the "-"/"+" whitespace-control markers. Comments are
// dropped. InvalidArgument with the line and column for an unterminated tag or string, or a
// character that starts no token.
absl::StatusOr<std::vector<Token>> Lex(std::string_view source);

// "line L, column C" of a byte offset (1-based).
std::string Where(std::string_view source, size_t pos);

// ---- Syntax tree ------------------------------------------------------------------------------

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class K {
    kLiteral,  // literal
    kName,     // name
    kList,     // args: items
    kTuple,    // args: items (evaluates to a list)
    kDict,     // args: key, value, key, value, ...
    kAttr,     // args[0].name
    kItem,     // args[0][args[1]]
    kSlice,    // args[0][args[1]:args[2]:args[3]] (null = omitted)
    kCall,     // args[0](args[1..], kwargs)
    kFilter,   // args[0] | name(args[1..], kwargs)
    kTest,     // args[0] is [not] name(args[1..])
    kNeg,      // -args[0]
    kPos,      // +args[0]
    kNot,      // not args[0]
    kAnd,      // args[0] and args[1]
    kOr,       // args[0] or args[1]
    kBinary,   // args[0] name args[1]: + - * / // % ** ~
    kCompare,  // args[0] ops[0] args[1] ops[1] args[2] ...: == != < <= > >= in notin
    kCond,     // args[1] if args[0] else args[2] (args[2] null = undefined)
  };
  K k = K::kLiteral;
  size_t pos = 0;
  Value literal;
  std::string name;
  bool negated = false;  // kTest: "is not"
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // kCompare
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Node {
  enum class K {
    kText,      // text
    kOutput,    // {{ expr }}
    kIf,        // branches: (condition, body); a null condition is the else branch
    kFor,       // for targets in expr [if filter]: body [else: else_body]
    kSet,       // set targets = expr, or set targets[0].attr = expr
    kSetBlock,  // set targets[0]: body endset
    kMacro,     // macro name(params): body
    kBreak,
    kContinue,
    kScope,  // a body rendered as is ({% generation %} ... {% endgeneration %})
  };
  K k = K::kText;
  size_t pos = 0;
  std::string text;  // text; macro name
  std::string attr;  // kSet: "ns.attr" target
  ExprPtr expr;
  ExprPtr filter;
  std::vector<std::string> targets;
  std::vector<std::pair<ExprPtr, Body>> branches;
  std::vector<std::pair<std::string, ExprPtr>> params;  // macro parameters with defaults
  Body body;
  Body else_body;
};

// Parses a template. InvalidArgument (syntax) or Unimplemented (a statement, filter or test this
// interpreter does not have), with the line and column.
absl::StatusOr<Body> Parse(std::string_view source);

// Filter and test names the evaluator implements (checked while parsing).
bool IsKnownFilter(std::string_view name);
bool IsKnownTest(std::string_view name);

}  // namespace pipeinfer::chat::jinja
