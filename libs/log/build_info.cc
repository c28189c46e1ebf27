#include "log/build_info.h"

#ifndef PIPEINFER_BUILD_VERSION
#define PIPEINFER_BUILD_VERSION "unknown"
#endif
#ifndef PIPEINFER_BUILD_COMMIT
#define PIPEINFER_BUILD_COMMIT "unknown"
#endif

namespace pipeinfer::log {

const char* BuildVersion() { return PIPEINFER_BUILD_VERSION; }
const char* BuildCommit() { return PIPEINFER_BUILD_COMMIT; }
std::string SystemFingerprint() { return std::string("fp_") + BuildCommit(); }

}  // namespace pipeinfer::log
