// `pipeinfer tokenize` and `pipeinfer detokenize` (text <-> token ids with a model's vocabulary).
#pragma once

#include <CLI/CLI.hpp>

namespace pipeinfer::cli {

// Adds:
//   tokenize --model F.gguf [--no-bos] [--special] (--text T | --file F)
//       prints the ids as decimal numbers separated by single spaces, newline at the end.
//   detokenize --model F.gguf [--ids "1 2 3"]   (ids from stdin without --ids)
//       writes the raw bytes of the concatenated token pieces to stdout.
// Errors print "error: ..." to stderr and exit with status 1.
void RegisterTokenizeCommands(CLI::App& app);

}  // namespace pipeinfer::cli
