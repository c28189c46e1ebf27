// Runs the fuzz target over files given on the command line (used when libFuzzer is not
// available, e.g. GCC builds): the seed corpus and regression inputs then run in every test pass.
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::ifstream f(argv[i], std::ios::binary);
    if (!f) {
      std::fprintf(stderr, "cannot read %s\n", argv[i]);
      return 1;
    }
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)),
                               std::istreambuf_iterator<char>());
    // Every prefix length at a coarse stride plus the whole file.
    for (size_t n = 0; n < bytes.size(); n += 1 + bytes.size() / 512) {
      LLVMFuzzerTestOneInput(bytes.data(), n);
    }
    LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
    std::printf("replayed %s (%zu bytes)\n", argv[i], bytes.size());
  }
  return 0;
}
