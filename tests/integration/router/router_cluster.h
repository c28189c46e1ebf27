// Helpers of the router's limit and disconnect suites: a two-stage pipeline of tiny-f32 with its
// draft service and a router started with extra flags, GetInfo of the stages and the draft
// service, and raw HTTP on a socket the test can close whenever it wants.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "pipeinfer/v1/draft.grpc.pb.h"
#include "pipeinfer/v1/stage.grpc.pb.h"
#include "testing/fixtures.h"
#include "testing/process.h"
#include "testing/service_group.h"

namespace pipeinfer::testing {

struct RouterCluster {
  DraftPipeline pipeline;
  std::string router_grpc;
  int http_port = 0;
  std::unique_ptr<ServiceGroup> services;
};

// Stage 1, stage 0 (plus `stage0_flags`), the draft service and a router (plus `router_flags`)
// over tiny-f32; nullptr when they did not start.
inline std::unique_ptr<RouterCluster> StartRouterCluster(
    const std::string& suite, const std::vector<std::string>& stage0_flags,
    const std::vector<std::string>& router_flags) {
  const std::string model = FixturePath("models/tiny-f32.gguf");
  auto c = std::make_unique<RouterCluster>();
  c->services = StartServiceGroup(suite, [&](ServiceGroup& g) {
    if (!StartDraftPipeline(g, model, c->pipeline, stage0_flags)) return false;
    c->router_grpc = FreeLoopbackAddress();
    c->http_port = FreePort();
    std::vector<std::string> argv = {BinPath("pipeinfer-router"),
                                     "--http",
                                     "127.0.0.1:" + std::to_string(c->http_port),
                                     "--grpc",
                                     c->router_grpc,
                                     "--draft",
                                     c->pipeline.draft,
                                     "--model",
                                     model};
    argv.insert(argv.end(), router_flags.begin(), router_flags.end());
    return g.Start("router", argv, c->router_grpc);
  });
  if (!c->services) return nullptr;
  return c;
}

inline v1::StageInfo GetStageInfo(const std::string& addr) {
  auto stub = v1::Stage::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::StageInfo info;
  EXPECT_TRUE(stub->GetInfo(&ctx, v1::StageInfoRequest(), &info).ok());
  return info;
}

inline v1::DraftInfo GetDraftInfo(const std::string& addr) {
  auto stub = v1::Draft::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::DraftInfo info;
  EXPECT_TRUE(stub->GetInfo(&ctx, v1::DraftInfoRequest(), &info).ok());
  return info;
}

// A connected socket to 127.0.0.1:port, or -1.
inline int ConnectLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// "POST <path>" with a JSON body (and `extra_headers`, each ending in \r\n).
inline std::string PostRequest(const std::string& path, const std::string& body,
                               const std::string& extra_headers = "") {
  return "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
         extra_headers + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

inline bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// Reads until the peer closes, `until` appears, or `timeout` passes.
inline std::string ReadSome(int fd, const std::string& until, std::chrono::milliseconds timeout) {
  timeval tv{0, 50 * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string got;
  const auto end = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  while (std::chrono::steady_clock::now() < end) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n > 0) {
      got.append(buf, n);
      if (!until.empty() && got.find(until) != std::string::npos) break;
    }
  }
  return got;
}

}  // namespace pipeinfer::testing
