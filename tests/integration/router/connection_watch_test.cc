// libs/router/connection_watch: on real loopback TCP connections, FindConnectionFd finds the
// accepted socket by its addresses, PeerGone tells a closed or reset peer from one that is still
// there (also with unread bytes queued), and DisconnectWatcher calls back once, within a few
// polling intervals, when the client closes.
#include "router/connection_watch.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace pipeinfer::router {
namespace {

using Clock = std::chrono::steady_clock;

std::pair<std::string, int> Addr(int fd, bool peer) {
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  EXPECT_EQ(peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len)
                 : getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len),
            0);
  char host[NI_MAXHOST];
  EXPECT_EQ(getnameinfo(reinterpret_cast<sockaddr*>(&a), len, host, sizeof(host), nullptr, 0,
                        NI_NUMERICHOST),
            0);
  return {host, ntohs(reinterpret_cast<sockaddr_in&>(a).sin_port)};
}

// A listening socket on 127.0.0.1 and one accepted connection to it.
struct Connection {
  int listener = -1, client = -1, server = -1;

  Connection() {
    listener = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    EXPECT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(listen(listener, 4), 0);
    EXPECT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len), 0);
    client = socket(AF_INET, SOCK_STREAM, 0);
    EXPECT_EQ(connect(client, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    server = accept(listener, nullptr, nullptr);
    EXPECT_GE(server, 0);
  }
  ~Connection() {
    for (int fd : {listener, client, server}) {
      if (fd >= 0) close(fd);
    }
  }
  void CloseClient() {
    close(client);
    client = -1;
  }
};

TEST(ConnectionWatchTest, FindsTheAcceptedSocketByItsAddresses) {
  Connection c, other;
  const auto [local_host, local_port] = Addr(c.server, /*peer=*/false);
  const auto [remote_host, remote_port] = Addr(c.server, /*peer=*/true);
  EXPECT_EQ(local_host, "127.0.0.1");
  EXPECT_EQ(FindConnectionFd(local_host, local_port, remote_host, remote_port), c.server);
  // The client's end of the same connection has the addresses the other way round.
  EXPECT_EQ(FindConnectionFd(remote_host, remote_port, local_host, local_port), c.client);
  EXPECT_EQ(FindConnectionFd(local_host, local_port, remote_host, /*remote_port=*/1), -1);
  // Another connection is told apart by its ports.
  const auto [other_host, other_port] = Addr(other.server, /*peer=*/false);
  EXPECT_EQ(FindConnectionFd(other_host, other_port, remote_host, remote_port), -1);
}

TEST(ConnectionWatchTest, PeerGoneAfterCloseNotBefore) {
  Connection c;
  EXPECT_FALSE(PeerGone(c.server));
  // Unread bytes from a live client are not a disconnect, and PeerGone does not consume them.
  ASSERT_EQ(send(c.client, "GET", 3, 0), 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(PeerGone(c.server));
  c.CloseClient();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_TRUE(PeerGone(c.server));  // FIN behind the unread bytes
  char buf[8];
  EXPECT_EQ(recv(c.server, buf, sizeof(buf), MSG_DONTWAIT), 3);
}

TEST(ConnectionWatchTest, PeerGoneAfterReset) {
  Connection c;
  linger l{1, 0};  // close() sends RST
  ASSERT_EQ(setsockopt(c.client, SOL_SOCKET, SO_LINGER, &l, sizeof(l)), 0);
  c.CloseClient();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_TRUE(PeerGone(c.server));
}

TEST(ConnectionWatchTest, WatcherCallsBackOnceWhenTheClientCloses) {
  DisconnectWatcher watcher(std::chrono::milliseconds(50));
  Connection c, stays;
  std::atomic<int> calls{0}, stays_calls{0};
  auto w = watcher.Add(c.server, [&] { ++calls; });
  auto w2 = watcher.Add(stays.server, [&] { ++stays_calls; });
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_EQ(calls, 0);
  const auto t0 = Clock::now();
  c.CloseClient();
  while (calls == 0 && Clock::now() - t0 < std::chrono::seconds(2)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const auto waited = Clock::now() - t0;
  EXPECT_EQ(calls, 1);
  EXPECT_LT(waited, std::chrono::milliseconds(500));
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(stays_calls, 0);
  // After a Watch is gone its callback never runs, even when its peer then closes.
  w2.reset();
  stays.CloseClient();
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_EQ(stays_calls, 0);
}

}  // namespace
}  // namespace pipeinfer::router
