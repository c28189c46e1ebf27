// The build's identity, for any library: the project version and the git commit checked out when
// CMake configured the build ("unknown" outside a git checkout).
#pragma once

#include <string>

namespace pipeinfer::log {

const char* BuildVersion();
const char* BuildCommit();
// OpenAI's system_fingerprint: "fp_" + the commit.
std::string SystemFingerprint();

}  // namespace pipeinfer::log
