#include "router/connection_watch.h"

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdlib>
#include <vector>

namespace pipeinfer::router {
namespace {

// Whether one end of socket `fd` (its peer, or its own address) is want_host:want_port, with the
// host written as cpp-httplib writes Request::remote_addr and local_addr (getnameinfo with
// NI_NUMERICHOST). The port is compared first: it rules out nearly every other socket cheaply.
bool EndMatches(int fd, bool peer, const std::string& want_host, int want_port) {
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  const int rc = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len)
                      : getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  if (rc != 0) return false;
  int port = -1;
  if (a.ss_family == AF_INET) {
    port = ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  } else if (a.ss_family == AF_INET6) {
    port = ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  }
  if (port != want_port) return false;
  char host[NI_MAXHOST];
  return getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, host, sizeof(host), nullptr, 0,
                     NI_NUMERICHOST) == 0 &&
         want_host == host;
}

// The open file descriptors of this process (from /proc/self/fd; without procfs, every number
// below the descriptor limit).
std::vector<int> OpenFds() {
  std::vector<int> fds;
  if (DIR* d = opendir("/proc/self/fd")) {
    const int own = dirfd(d);
    while (const dirent* e = readdir(d)) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      const int fd = std::atoi(e->d_name);
      if (fd != own) fds.push_back(fd);
    }
    closedir(d);
    return fds;
  }
  rlimit lim{};
  const rlim_t n = getrlimit(RLIMIT_NOFILE, &lim) == 0 ? lim.rlim_cur : 1024;
  for (rlim_t fd = 0; fd < n && fd < (1u << 20); ++fd) fds.push_back(static_cast<int>(fd));
  return fds;
}

}  // namespace

int FindConnectionFd(const std::string& local_addr, int local_port, const std::string& remote_addr,
                     int remote_port) {
  // The other descriptors belong to other threads (other connections, gRPC, files), which may
  // close or reuse them meanwhile: each is only asked for its addresses, never fstat()ed or read.
  // One closed meanwhile fails (EBADF), one that is not a socket fails (ENOTSOCK), and one reused
  // meanwhile cannot match, because our connection, open until its handler returns, is the only
  // socket with these four addresses.
  for (int fd : OpenFds()) {
    // The peer first: it tells the connection apart from the listening socket and from the
    // process's other connections on the same port.
    if (EndMatches(fd, /*peer=*/true, remote_addr, remote_port) &&
        EndMatches(fd, /*peer=*/false, local_addr, local_port)) {
      return fd;
    }
  }
  return -1;
}

bool PeerGone(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;  // nothing to report (or EINTR: ask again next time)
  // POLLRDHUP: the peer sent FIN, even when unread bytes are still queued before it.
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  if (p.revents & POLLIN) {
    char c;
    const ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return true;  // orderly shutdown
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;  // reset
  }
  return false;  // still there (bytes of a pipelined request may be waiting)
}

DisconnectWatcher::DisconnectWatcher(std::chrono::milliseconds interval)
    : interval_(interval), thread_([this] { Run(); }) {}

DisconnectWatcher::~DisconnectWatcher() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

DisconnectWatcher::Watch::~Watch() { w_->Remove(id_); }

std::unique_ptr<DisconnectWatcher::Watch> DisconnectWatcher::Add(int fd,
                                                                 std::function<void()> on_gone) {
  uint64_t id;
  {
    std::lock_guard<std::mutex> l(mu_);
    id = next_id_++;
    entries_.emplace(id, Entry{fd, std::move(on_gone)});
  }
  cv_.notify_all();
  return std::unique_ptr<Watch>(new Watch(this, id));
}

void DisconnectWatcher::Remove(uint64_t id) {
  std::lock_guard<std::mutex> l(mu_);
  entries_.erase(id);
}

void DisconnectWatcher::Run() {
  std::unique_lock<std::mutex> l(mu_);
  while (!stop_) {
    if (entries_.empty()) {
      cv_.wait(l, [&] { return stop_ || !entries_.empty(); });
      continue;
    }
    cv_.wait_for(l, interval_, [&] { return stop_; });
    for (auto it = entries_.begin(); !stop_ && it != entries_.end();) {
      if (PeerGone(it->second.fd)) {
        it->second.on_gone();
        it = entries_.erase(it);  // reported once; the Watch's Remove then finds nothing
      } else {
        ++it;
      }
    }
  }
}

}  // namespace pipeinfer::router
