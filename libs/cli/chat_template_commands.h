// `pipeinfer chat-template`: render a conversation with a model's chat template.
#pragma once

#include <CLI/CLI.hpp>

namespace pipeinfer::cli {

// Adds:
//   chat-template --model F.gguf --messages FILE.json [--add-generation-prompt]
//                 [--chat-template NAME] [--enable-thinking true|false]
//       FILE.json holds a list of messages ({"role", "content", ...}) or an object with
//       "messages" whose other keys become template variables (e.g. "tools"); "-" reads stdin.
//       Writes the rendered text, byte for byte, to stdout: the GGUF's tokenizer.chat_template
//       rendered as Hugging Face renders it (bos_token / eos_token are the texts of the
//       vocabulary's BOS/EOS tokens; a leading BOS text is kept), or the named built-in format.
// Errors print "error: ..." to stderr and exit with status 1.
void RegisterChatTemplateCommands(CLI::App& app);

}  // namespace pipeinfer::cli
