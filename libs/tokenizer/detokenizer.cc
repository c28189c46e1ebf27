#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace pipeinfer::tokenizer {

std::string IncrementalDetokenizer::Push(int32_t id) {
  pending_ += tokenizer_->Piece(id);
  std::string out;
  DrainUtf8(&pending_, /*final=*/false, &out);
  return out;
}

std::string IncrementalDetokenizer::Flush() {
  std::string out;
  DrainUtf8(&pending_, /*final=*/true, &out);
  return out;
}

}  // namespace pipeinfer::tokenizer
