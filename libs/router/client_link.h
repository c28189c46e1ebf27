// The HTTP client of one generation request, as the generation sees it: whether the client went
// away, and the draft call to cancel when it does. Shared by the handler, the streaming worker
// and the DisconnectWatcher callback.
#pragma once

#include <atomic>
#include <memory>

#include "router/connection_watch.h"
#include "router/core.h"
#include "router/draft_call.h"

namespace httplib {
struct Request;
}  // namespace httplib

namespace pipeinfer::router {

struct ClientLink {
  // Marks the client gone and cancels the draft call (also before it started: gRPC then cancels
  // it as it starts). Thread-safe.
  void Gone() {
    gone = true;
    call.Cancel();
  }

  std::atomic<bool> gone{false};
  DraftCall call;  // the Draft.Generate call
  // Declared last: removed (waiting for a running callback) before call is destroyed.
  std::unique_ptr<DisconnectWatcher::Watch> watch;
};

// A link whose Gone() the core's DisconnectWatcher calls when the connection of `req` closes.
// When the connection's socket cannot be found the link is still usable; the client's going
// away is then only noticed when a write fails.
std::shared_ptr<ClientLink> WatchClient(Core& core, const httplib::Request& req);

}  // namespace pipeinfer::router
