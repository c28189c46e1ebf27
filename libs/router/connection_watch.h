// Noticing that an HTTP client went away while its request is still being served.
//
// cpp-httplib 0.11.4 gives a handler no access to its connection's socket, and a non-streamed
// handler never writes until the end, so a client that disconnects would otherwise go unnoticed
// until the whole generation is done (holding a draft session, KV blocks and an admission slot).
// Instead the router finds the socket by its addresses (FindConnectionFd: the connection is the
// only socket of the process with that local and remote address and port) and a
// DisconnectWatcher thread polls it (PeerGone) every ~100 ms while the request runs.
//
// A client that half-closes (shutdown(SHUT_WR)) after sending its request and still waits for
// the answer is taken as gone too; HTTP clients do not do that in practice.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace pipeinfer::router {

// The file descriptor of this process's TCP socket whose local end is local_addr:local_port and
// whose peer is remote_addr:remote_port (numeric addresses as getnameinfo(NI_NUMERICHOST) writes
// them, e.g. "127.0.0.1" or "::1"), or -1. Scans /proc/self/fd (about a microsecond per open fd).
int FindConnectionFd(const std::string& local_addr, int local_port, const std::string& remote_addr,
                     int remote_port);

// Whether the peer of the connected TCP socket `fd` has gone: it closed its side (FIN received;
// also when unread request bytes are still queued) or reset the connection. Never blocks and
// never consumes data.
bool PeerGone(int fd);

// One thread that checks the watched sockets every `interval` and, the first time a socket's peer
// is gone, calls its callback (once, on the watcher thread).
class DisconnectWatcher {
 public:
  explicit DisconnectWatcher(std::chrono::milliseconds interval = std::chrono::milliseconds(100));
  ~DisconnectWatcher();
  DisconnectWatcher(const DisconnectWatcher&) = delete;
  DisconnectWatcher& operator=(const DisconnectWatcher&) = delete;

  // Watching one socket until destroyed. After the destructor returns the callback is not
  // running and will not run. The socket must stay open while the Watch lives.
  class Watch {
   public:
    ~Watch();
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;

   private:
    friend class DisconnectWatcher;
    Watch(DisconnectWatcher* w, uint64_t id) : w_(w), id_(id) {}
    DisconnectWatcher* w_;
    uint64_t id_;
  };

  // Starts watching `fd`; `on_gone` must be quick and must not destroy the Watch.
  std::unique_ptr<Watch> Add(int fd, std::function<void()> on_gone);

 private:
  struct Entry {
    int fd;
    std::function<void()> on_gone;
  };
  void Run();
  void Remove(uint64_t id);

  const std::chrono::milliseconds interval_;
  std::mutex mu_;  // held while callbacks run, so that Remove waits for a running one
  std::condition_variable cv_;
  std::map<uint64_t, Entry> entries_;
  uint64_t next_id_ = 1;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace pipeinfer::router
