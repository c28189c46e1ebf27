#include "cli/tokenize_commands.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gguf/reader.h"
#include "tokenizer/tokenizer.h"

namespace pipeinfer::cli {
namespace {

struct TokenizeArgs {
  std::string model;
  bool no_bos = false;
  bool special = false;
  std::optional<std::string> text;
  std::optional<std::string> file;
};

struct DetokenizeArgs {
  std::string model;
  std::optional<std::string> ids;
};

int Fail(const std::string& msg) {
  std::cerr << "error: " << msg << "\n";
  return 1;
}

absl::StatusOr<std::unique_ptr<tokenizer::Tokenizer>> LoadTokenizer(const std::string& path) {
  auto f = gguf::GgufFile::Open(path);
  if (!f.ok()) return f.status();
  return tokenizer::Tokenizer::FromGguf(**f);
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return data;
}

// Ids separated by whitespace and/or commas (so "[1, 2, 3]" style lists work too).
absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& s, int32_t n_vocab) {
  std::string cleaned = s;
  for (char& c : cleaned) {
    if (c == ',' || c == '[' || c == ']') c = ' ';
  }
  std::istringstream in(cleaned);
  std::vector<int32_t> ids;
  for (std::string word; in >> word;) {
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(word.c_str(), &end, 10);
    if (end == word.c_str() || *end != '\0' || errno == ERANGE) {
      return absl::InvalidArgumentError(absl::StrCat("bad token id '", word, "'"));
    }
    if (v < 0 || v >= n_vocab) {
      return absl::OutOfRangeError(
          absl::StrCat("token id ", v, " is outside the vocabulary (0..", n_vocab - 1, ")"));
    }
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

int RunTokenize(const TokenizeArgs& args) {
  if (args.text.has_value() == args.file.has_value()) {
    return Fail("give exactly one of --text and --file");
  }
  std::string text;
  if (args.text) {
    text = *args.text;
  } else {
    auto data = ReadFile(*args.file);
    if (!data.ok()) return Fail(std::string(data.status().message()));
    text = std::move(*data);
  }
  auto tok = LoadTokenizer(args.model);
  if (!tok.ok()) return Fail(std::string(tok.status().message()));
  const bool add_bos = (*tok)->add_bos() && !args.no_bos;
  const std::vector<int32_t> ids = (*tok)->Encode(text, add_bos, args.special);
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) line += ' ';
    line += std::to_string(ids[i]);
  }
  line += '\n';
  std::cout << line << std::flush;
  return std::cout ? 0 : Fail("cannot write to stdout");
}

int RunDetokenize(const DetokenizeArgs& args) {
  auto tok = LoadTokenizer(args.model);
  if (!tok.ok()) return Fail(std::string(tok.status().message()));
  std::string input;
  if (args.ids) {
    input = *args.ids;
  } else {
    input.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  auto ids = ParseIds(input, (*tok)->n_vocab());
  if (!ids.ok()) return Fail(std::string(ids.status().message()));
  const std::string bytes = (*tok)->Decode(*ids);
  std::cout.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  std::cout.flush();
  return std::cout ? 0 : Fail("cannot write to stdout");
}

}  // namespace

void RegisterTokenizeCommands(CLI::App& app) {
  auto targs = std::make_shared<TokenizeArgs>();
  CLI::App* tokenize = app.add_subcommand("tokenize", "Print the token ids of a text");
  tokenize->add_option("--model", targs->model, "GGUF model (or vocab-only) file")->required();
  tokenize->add_flag("--no-bos", targs->no_bos, "Do not add BOS (default: the model's add_bos)");
  tokenize->add_flag("--special", targs->special,
                     "Parse special-token text such as <s> as the token");
  CLI::Option* text = tokenize->add_option("--text", targs->text, "Text to tokenize");
  CLI::Option* file = tokenize->add_option("--file", targs->file, "File whose bytes to tokenize");
  text->excludes(file);
  tokenize->final_callback([targs] {
    const int rc = RunTokenize(*targs);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });

  auto dargs = std::make_shared<DetokenizeArgs>();
  CLI::App* detokenize =
      app.add_subcommand("detokenize", "Write the text (raw bytes) of token ids to stdout");
  detokenize->add_option("--model", dargs->model, "GGUF model (or vocab-only) file")->required();
  detokenize->add_option("--ids", dargs->ids,
                         "Token ids separated by spaces (default: read from stdin)");
  detokenize->final_callback([dargs] {
    const int rc = RunDetokenize(*dargs);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace pipeinfer::cli
