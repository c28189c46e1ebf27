// Jinja lexer with Hugging Face's environment: trim_blocks=True (the first newline after a block
// or comment tag is removed), lstrip_blocks=True (spaces and tabs from the start of a line up to
// a block or comment tag are removed), keep_trailing_newline=False (one trailing newline of the
// template is dropped). "{%-" / "-%}" strip all whitespace on that side; "{%+" / "+%}" turn the
// lstrip / trim off for that tag.
#include <cctype>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "chat/jinja_ast.h"

namespace pipeinfer::chat::jinja {
namespace {

bool IsWs(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

void AppendUtf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

class Lexer {
 public:
  explicit Lexer(std::string_view src) : src_(src) {}

  absl::StatusOr<std::vector<Token>> Run() {
    size_t pos = 0;
    while (true) {
      size_t open = FindOpener(pos);
      size_t text_begin = pos;
      size_t text_end = open == std::string_view::npos ? src_.size() : open;
      if (strip_next_ws_) {
        while (text_begin < text_end && IsWs(src_[text_begin])) ++text_begin;
      } else if (trim_next_nl_) {
        if (src_.substr(text_begin, 2) == "\r\n") {
          text_begin += 2;
        } else if (text_begin < text_end &&
                   (src_[text_begin] == '\n' || src_[text_begin] == '\r')) {
          ++text_begin;
        }
      }
      text_begin = std::min(text_begin, text_end);
      strip_next_ws_ = trim_next_nl_ = false;
      std::string text(src_.substr(text_begin, text_end - text_begin));
      if (open == std::string_view::npos) {
        EmitText(text, text_begin);
        break;
      }
      const char type = src_[open + 1];  // '{', '%' or '#'
      const char marker = open + 2 < src_.size() ? src_[open + 2] : '\0';
      if (marker == '-') {
        while (!text.empty() && IsWs(text.back())) text.pop_back();
      } else if (type != '{' && marker != '+') {
        // lstrip_blocks: only spaces/tabs between the start of the line and the tag.
        const size_t nl = text.find_last_of('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        const bool line_start = l_pos > 0 || text_begin == 0 || src_[text_begin - 1] == '\n' ||
                                src_[text_begin - 1] == '\r';
        bool only_ws = true;
        for (size_t i = l_pos; i < text.size(); ++i) only_ws = only_ws && IsWs(text[i]);
        if (line_start && only_ws) text.resize(l_pos);
      }
      EmitText(text, text_begin);
      size_t cur = open + 2 + ((marker == '-' || marker == '+') ? 1 : 0);
      if (type == '#') {
        const size_t close = src_.find("#}", cur);
        if (close == std::string_view::npos) return Error(open, "unterminated comment");
        SetAfter(close > cur ? src_[close - 1] : '\0', /*block=*/true);
        pos = close + 2;
        continue;
      }
      const bool block = type == '%';
      tokens_.push_back({block ? Tok::kBlockBegin : Tok::kVarBegin, "", 0, 0, open});
      auto end = LexTag(cur, block, open);
      if (!end.ok()) return end.status();
      pos = *end;
    }
    tokens_.push_back({Tok::kEof, "", 0, 0, src_.size()});
    return std::move(tokens_);
  }

 private:
  size_t FindOpener(size_t pos) const {
    while (true) {
      const size_t p = src_.find('{', pos);
      if (p == std::string_view::npos || p + 1 >= src_.size()) return std::string_view::npos;
      const char c = src_[p + 1];
      if (c == '{' || c == '%' || c == '#') return p;
      pos = p + 1;
    }
  }

  void EmitText(const std::string& text, size_t pos) {
    if (!text.empty()) tokens_.push_back({Tok::kText, text, 0, 0, pos});
  }

  // Whitespace handling after a tag whose closer was preceded by `marker`.
  void SetAfter(char marker, bool block) {
    if (marker == '-') {
      strip_next_ws_ = true;
    } else if (block && marker != '+') {
      trim_next_nl_ = true;
    }
  }

  absl::Status Error(size_t pos, std::string_view what) const {
    return absl::InvalidArgumentError(
        Cat("chat template syntax error at ", Where(src_, pos), ": ", what));
  }

  // Lexes the inside of a tag from `cur`; returns the offset after its closer.
  absl::StatusOr<size_t> LexTag(size_t cur, bool block, size_t open) {
    int depth = 0;
    while (true) {
      while (cur < src_.size() && IsWs(src_[cur])) ++cur;
      if (cur >= src_.size()) return Error(open, block ? "unterminated {% tag" : "unterminated {{");
      const std::string_view rest = src_.substr(cur);
      const std::string_view closer = block ? "%}" : "}}";
      for (std::string_view prefix : {"-", "+", ""}) {
        if (!block && prefix == "+") continue;
        if ((block || depth == 0) && rest.substr(0, prefix.size()) == prefix &&
            rest.substr(prefix.size(), 2) == closer) {
          tokens_.push_back({block ? Tok::kBlockEnd : Tok::kVarEnd, "", 0, 0, cur});
          SetAfter(prefix.empty() ? '\0' : prefix[0], block);
          return cur + prefix.size() + 2;
        }
      }
      const char c = src_[cur];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = cur;
        while (e < src_.size() &&
               (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) {
          ++e;
        }
        tokens_.push_back({Tok::kName, std::string(src_.substr(cur, e - cur)), 0, 0, cur});
        cur = e;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        cur = LexNumber(cur);
      } else if (c == '\'' || c == '"') {
        auto e = LexString(cur);
        if (!e.ok()) return e.status();
        cur = *e;
      } else {
        static constexpr std::string_view kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
        std::string op;
        for (std::string_view t : kTwo) {
          if (rest.substr(0, 2) == t) op = std::string(t);
        }
        if (op.empty()) {
          if (std::string_view("+-*/%~<>=()[]{}.,:|").find(c) == std::string_view::npos) {
            return Error(cur, Cat("unexpected character '", std::string(1, c), "'"));
          }
          op = std::string(1, c);
          if (c == '(' || c == '[' || c == '{') ++depth;
          if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
        }
        tokens_.push_back({Tok::kOp, op, 0, 0, cur});
        cur += op.size();
      }
    }
  }

  size_t LexNumber(size_t cur) {
    size_t e = cur;
    bool is_float = false;
    while (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) ++e;
    if (e + 1 < src_.size() && src_[e] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
      is_float = true;
      ++e;
      while (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) ++e;
    }
    if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t x = e + 1;
      if (x < src_.size() && (src_[x] == '+' || src_[x] == '-')) ++x;
      if (x < src_.size() && std::isdigit(static_cast<unsigned char>(src_[x]))) {
        is_float = true;
        e = x;
        while (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) ++e;
      }
    }
    Token t{is_float ? Tok::kFloat : Tok::kInt, std::string(src_.substr(cur, e - cur)), 0, 0, cur};
    if (is_float) {
      t.f = std::strtod(t.text.c_str(), nullptr);
    } else {
      t.i = std::strtoll(t.text.c_str(), nullptr, 10);
    }
    tokens_.push_back(std::move(t));
    return e;
  }

  // A quoted string with Python's escapes.
  absl::StatusOr<size_t> LexString(size_t cur) {
    const char q = src_[cur];
    std::string out;
    size_t i = cur + 1;
    while (true) {
      if (i >= src_.size()) return Error(cur, "unterminated string");
      const char c = src_[i];
      if (c == q) break;
      if (c != '\\' || i + 1 >= src_.size()) {
        out += c;
        ++i;
        continue;
      }
      const char n = src_[i + 1];
      i += 2;
      switch (n) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '0':
          out += '\0';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '\\':
        case '\'':
        case '"':
          out += n;
          break;
        case '\n':
          break;  // line continuation
        case 'x':
        case 'u':
        case 'U': {
          const size_t len = n == 'x' ? 2 : n == 'u' ? 4 : 8;
          if (i + len > src_.size()) return Error(i - 2, "truncated escape in string");
          const std::string hex(src_.substr(i, len));
          char* end = nullptr;
          const unsigned long cp = std::strtoul(hex.c_str(), &end, 16);
          if (end != hex.c_str() + len || cp > 0x10FFFF) {
            return Error(i - 2, "invalid escape in string");
          }
          AppendUtf8(static_cast<uint32_t>(cp), out);
          i += len;
          break;
        }
        default:
          out += '\\';
          out += n;
      }
    }
    tokens_.push_back({Tok::kString, std::move(out), 0, 0, cur});
    return i + 1;
  }

  std::string_view src_;
  std::vector<Token> tokens_;
  bool strip_next_ws_ = false;
  bool trim_next_nl_ = false;
};

}  // namespace

std::string Where(std::string_view source, size_t pos) {
  size_t line = 1, col = 1;
  for (size_t i = 0; i < pos && i < source.size(); ++i) {
    if (source[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return Cat("line ", line, ", column ", col);
}

absl::StatusOr<std::vector<Token>> Lex(std::string_view source) {
  if (source.size() >= 2 && source.substr(source.size() - 2) == "\r\n") {
    source.remove_suffix(2);
  } else if (!source.empty() && (source.back() == '\n' || source.back() == '\r')) {
    source.remove_suffix(1);
  }
  return Lexer(source).Run();
}

}  // namespace pipeinfer::chat::jinja
