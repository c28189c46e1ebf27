// Paths and small readers for the test fixtures (copied from llama.cpp-produced references into
// tests/fixtures so a clean clone is self-contained).
#pragma once

#include <sys/wait.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace pipeinfer::testing {

// The folders are compiled in; the environment variables of the same names override them, for test
// binaries run away from their build tree (scripts/gpu-check.sh on a GPU machine).
inline std::string DirFromEnv(const char* var, const char* compiled) {
  const char* v = std::getenv(var);
  return v != nullptr && *v != '\0' ? std::string(v) : std::string(compiled);
}

inline std::string FixturePath(const std::string& rel) {
  return DirFromEnv("PIPEINFER_FIXTURES_DIR", PIPEINFER_FIXTURES_DIR) + "/" + rel;
}

inline std::string BinPath(const std::string& name) {
  return DirFromEnv("PIPEINFER_BIN_DIR", PIPEINFER_BIN_DIR) + "/" + name;
}

inline std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

inline std::string ReadText(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Decimal token ids separated by whitespace (the fixtures' *_ids.txt format).
inline std::vector<int32_t> ParseIds(const std::string& text) {
  std::istringstream in(text);
  std::vector<int32_t> ids;
  int32_t v;
  while (in >> v) ids.push_back(v);
  return ids;
}

inline std::vector<int32_t> ReadIds(const std::string& path) { return ParseIds(ReadText(path)); }

// Raw little-endian float32 values (the fixtures' *.f32 format).
inline std::vector<float> ReadF32(const std::string& path) {
  const std::vector<uint8_t> b = ReadBytes(path);
  std::vector<float> out(b.size() / sizeof(float));
  std::memcpy(out.data(), b.data(), out.size() * sizeof(float));
  return out;
}

// IEEE half -> float, written independently of the engine's conversion.
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v;
  if (exp == 0) {
    v = static_cast<float>(mant) / 1024.0f / 16384.0f;  // subnormal: mant * 2^-24
  } else if (exp == 31) {
    v = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    v = (1.0f + static_cast<float>(mant) / 1024.0f) * std::ldexp(1.0f, static_cast<int>(exp) - 15);
  }
  return sign ? -v : v;
}

// Runs a shell command, capturing stdout (and stderr unless `merge_stderr` is false, in which case
// stderr is discarded); returns the exit status.
inline int RunCommand(const std::string& cmd, std::string* output, bool merge_stderr = true) {
  std::string full = cmd + (merge_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(full.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) output->append(buf, n);
  int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace pipeinfer::testing
