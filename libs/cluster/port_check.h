// Checking, before a local cluster starts, that none of its ports is taken: every server binds
// exclusively and would exit, but a health check would find whatever else serves there.
#pragma once

#include "absl/status/status.h"
#include "cluster/config.h"

namespace pipeinfer::cluster {

// OK when every address the cluster would listen on can be bound now; ALREADY_EXISTS naming the
// port and what it was meant for when one is taken. `stages_in_namespaces`: link emulation (the
// stages listen in their own network namespaces and are not checked).
absl::Status CheckPortsFree(const ClusterConfig& c, bool stages_in_namespaces);

}  // namespace pipeinfer::cluster
