#include "router/client_link.h"

#include <httplib.h>

namespace pipeinfer::router {

std::shared_ptr<ClientLink> WatchClient(Core& core, const httplib::Request& req) {
  auto link = std::make_shared<ClientLink>();
  const int fd = FindConnectionFd(req.local_addr, req.local_port, req.remote_addr, req.remote_port);
  // The raw pointer: the Watch lives inside the link and is removed before the link goes.
  if (fd >= 0) link->watch = core.watcher->Add(fd, [l = link.get()] { l->Gone(); });
  return link;
}

}  // namespace pipeinfer::router
