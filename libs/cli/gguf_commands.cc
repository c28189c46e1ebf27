#include "cli/gguf_commands.h"

#include <iostream>
#include <memory>
#include <string>

#include "gguf/inspect.h"
#include "gguf/reader.h"

namespace pipeinfer::cli {
namespace {

struct InspectArgs {
  std::string file;
  size_t max_items = 8;
};

int RunInspect(const InspectArgs& args) {
  auto f = gguf::GgufFile::Open(args.file);
  if (!f.ok()) {
    std::cerr << "error: " << f.status().message() << "\n";
    return 1;
  }
  gguf::InspectOptions opts;
  opts.max_array_items = args.max_items;
  std::cout << gguf::InspectReport(**f, opts);
  return 0;
}

}  // namespace

void RegisterGgufCommands(CLI::App& app) {
  CLI::App* gguf = app.add_subcommand("gguf", "Model file tools");
  gguf->require_subcommand(1);

  auto args = std::make_shared<InspectArgs>();
  CLI::App* inspect =
      gguf->add_subcommand("inspect", "Print metadata and the tensor table of a GGUF file");
  inspect->add_option("file", args->file, "GGUF file")->required();
  inspect->add_option("--max-items", args->max_items, "Array items shown per metadata value");
  inspect->final_callback([args] {
    int rc = RunInspect(*args);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace pipeinfer::cli
