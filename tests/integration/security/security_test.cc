// A TLS cluster from `pipeinfer up --tls --tls-dir DIR --api-keys-file FILE` (README "Security"):
//   * the router serves chats over HTTPS (verified against DIR/ca.pem) and refuses plain HTTP;
//   * API keys: no key or a wrong one gets 401 with `WWW-Authenticate: Bearer` on HTTP and
//     UNAUTHENTICATED on gRPC; the right key gets 200 / OK; /health stays open;
//   * a stage refuses a client without a certificate, one with a certificate from another CA
//     (even with the CN of the draft service), and a plaintext client; a client with a trusted
//     certificate that is not in the stage's allow-list may read GetInfo but not open Pipeline;
//   * `status` and `chat --state` take the certificates and a key from the state file;
//   * no key appears in any process's log.
#include <httplib.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pipeinfer/v1/router.grpc.pb.h"
#include "pipeinfer/v1/stage.grpc.pb.h"
#include "rpc/credentials.h"
#include "testing/cluster_harness.h"
#include "testing/detached_cluster_test.h"
#include "testing/fixtures.h"

namespace pipeinfer {
namespace {

using json = nlohmann::json;
using pipeinfer::testing::CommandResult;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::RunCommand;

constexpr char kKey[] = "sk-right-5f1c77e0";
constexpr char kWrongKey[] = "sk-wrong-0a9d3b21";

class SecurityTest : public testing::DetachedClusterTest {
 protected:
  SecurityTest() : DetachedClusterTest("security_test") {}

  std::string Addr(int offset) const { return "127.0.0.1:" + std::to_string(base_port_ + offset); }

  static std::shared_ptr<grpc::Channel> Channel(const std::string& addr,
                                                const rpc::TlsFiles& files) {
    auto creds = rpc::MakeChannelCredentials(files);
    EXPECT_TRUE(creds.ok()) << creds.status();
    return grpc::CreateChannel(addr, *creds);
  }

  static grpc::Status StageInfo(const std::shared_ptr<grpc::Channel>& ch) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::StageInfo info;
    return v1::Stage::NewStub(ch)->GetInfo(&ctx, v1::StageInfoRequest(), &info);
  }

  // The status of a server reflection stream that sends nothing: UNIMPLEMENTED when the server has
  // no reflection service (stage_server_test checks that a plaintext stage has one).
  static grpc::Status ReflectionStatus(const std::shared_ptr<grpc::Channel>& ch) {
    grpc::GenericStub stub(ch);
    grpc::CompletionQueue cq;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    auto call = stub.PrepareCall(
        &ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
    grpc::Status st(grpc::StatusCode::UNKNOWN, "no status");
    void* tag = nullptr;
    bool ok = false;
    call->StartCall(reinterpret_cast<void*>(1));
    cq.Next(&tag, &ok);  // one operation at a time
    if (ok) {
      call->WritesDone(reinterpret_cast<void*>(2));
      cq.Next(&tag, &ok);
    }
    call->Finish(&st, reinterpret_cast<void*>(3));
    cq.Next(&tag, &ok);
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    return st;
  }

  static grpc::Status ListModels(const std::shared_ptr<grpc::Channel>& ch, const std::string& auth,
                                 v1::ListModelsResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!auth.empty()) ctx.AddMetadata("authorization", auth);
    return v1::Router::NewStub(ch)->ListModels(&ctx, v1::ListModelsRequest(), resp);
  }
};

TEST_F(SecurityTest, TlsClusterServesChatsWithKeysAndStagesRefuseStrangers) {
  signal(SIGPIPE, SIG_IGN);  // a refused TLS handshake closes sockets the clients still write to
  const std::string tls = dir_ + "/tls", keys = dir_ + "/keys";
  {
    std::ofstream out(keys);
    out << "# test keys\n" << kKey << "\n";
  }
  const CommandResult up =
      UpOnFreePorts({"--model", FixturePath("models/tiny-f16.gguf"), "--stages", "2", "--kv-tokens",
                     "1024", "--tls", "--tls-dir", tls, "--api-keys-file", keys},
                    7);
  ASSERT_EQ(up.exit_code, 0) << up.output;
  for (const char* f : {"ca.pem", "client.pem", "client-key.pem", "stage0.pem", "stage1-key.pem",
                        "draft.pem", "router.pem"}) {
    EXPECT_TRUE(std::filesystem::exists(tls + "/" + f)) << f;
  }

  // ---- HTTPS and API keys on HTTP ------------------------------------------------------------
  httplib::SSLClient https("127.0.0.1", http_port_);
  https.set_ca_cert_path((tls + "/ca.pem").c_str());
  https.enable_server_certificate_verification(true);
  https.set_read_timeout(60, 0);
  const std::string body = json{
      {"messages", {{{"role", "user"}, {"content", "hello"}}}},
      {"max_tokens", 4},
      {"temperature", 0}}.dump();
  for (const std::string& auth :
       {std::string(), std::string("Bearer ") + kWrongKey, std::string(kKey) /* no scheme */}) {
    httplib::Headers h;
    if (!auth.empty()) h.emplace("Authorization", auth);
    auto r = https.Post("/v1/chat/completions", h, body, "application/json");
    ASSERT_TRUE(r) << httplib::to_string(r.error());
    EXPECT_EQ(r->status, 401) << auth << ": " << r->body;
    EXPECT_EQ(r->get_header_value("WWW-Authenticate"), "Bearer");
    const json e = json::parse(r->body);
    EXPECT_EQ(e["error"]["code"], "invalid_api_key") << r->body;
    EXPECT_EQ(r->body.find("sk-"), std::string::npos) << r->body;
  }
  {
    auto r = https.Post("/v1/chat/completions", {{"Authorization", std::string("Bearer ") + kKey}},
                        body, "application/json");
    ASSERT_TRUE(r) << httplib::to_string(r.error());
    ASSERT_EQ(r->status, 200) << r->body;
    const json a = json::parse(r->body);
    EXPECT_EQ(a["object"], "chat.completion");
    EXPECT_GE(a["usage"]["completion_tokens"].get<int>(), 1);
    EXPECT_LE(a["usage"]["completion_tokens"].get<int>(), 4);
  }
  {
    auto r = https.Get("/health");  // open without --protect-metrics
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    auto m = https.Get("/v1/models");
    ASSERT_TRUE(m);
    EXPECT_EQ(m->status, 401);
  }
  {
    httplib::Client plain("127.0.0.1", http_port_);  // plain HTTP to the HTTPS port
    plain.set_read_timeout(5, 0);
    auto r = plain.Get("/health");
    EXPECT_FALSE(r && r->status == 200);
  }

  // ---- API keys on gRPC (the router also requires a client certificate) -----------------------
  const rpc::TlsFiles client = rpc::TlsFilesInDir(tls, "client");
  const std::string router_grpc = Addr(3);
  auto router = Channel(router_grpc, client);
  v1::ListModelsResponse models;
  EXPECT_EQ(ListModels(router, "", &models).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ListModels(router, std::string("Bearer ") + kWrongKey, &models).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  const grpc::Status ok = ListModels(router, std::string("Bearer ") + kKey, &models);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  ASSERT_EQ(models.models_size(), 1);
  {
    rpc::TlsFiles no_cert;
    no_cert.ca = client.ca;
    EXPECT_FALSE(
        ListModels(Channel(router_grpc, no_cert), std::string("Bearer ") + kKey, &models).ok());
  }

  // ---- Stages: who may connect ---------------------------------------------------------------
  for (int stage = 0; stage < 2; ++stage) {
    const std::string addr = Addr(stage);
    SCOPED_TRACE(addr);
    const grpc::Status trusted = StageInfo(Channel(addr, client));
    EXPECT_TRUE(trusted.ok()) << trusted.error_message();
    rpc::TlsFiles no_cert;  // verifies the server, presents nothing
    no_cert.ca = client.ca;
    EXPECT_FALSE(StageInfo(Channel(addr, no_cert)).ok());
    EXPECT_FALSE(StageInfo(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials())).ok());
  }
  EXPECT_EQ(ReflectionStatus(Channel(Addr(0), client)).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);  // reflection is off in secure mode
  // A certificate from another CA, with the draft service's name: refused in the handshake.
  const std::string other = dir_ + "/other";
  std::filesystem::create_directories(other);
  std::string out;
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  const std::string cmd =
      "cd '" + other + "' && openssl req -x509 " + ec +
      " -days 1 -subj /CN=rogue-ca -keyout ca-key.pem -out ca.pem && openssl req -new " + ec +
      " -subj /CN=draft -keyout draft-key.pem -out draft.csr && printf "
      "'subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=clientAuth,serverAuth\\n' > "
      "ext && openssl x509 -req -in draft.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "
      "1 -extfile ext -out draft.pem";
  ASSERT_EQ(RunCommand(cmd, &out), 0) << out;
  rpc::TlsFiles rogue{client.ca, other + "/draft.pem", other + "/draft-key.pem"};
  const grpc::Status rogue_info = StageInfo(Channel(Addr(0), rogue));
  EXPECT_FALSE(rogue_info.ok());
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    auto stream = v1::Stage::NewStub(Channel(Addr(0), rogue))->Pipeline(&ctx);
    stream->WritesDone();
    EXPECT_FALSE(stream->Finish().ok());
  }
  // A trusted certificate that is not in stage 0's allow-list ("draft"): no Pipeline stream.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    auto stream = v1::Stage::NewStub(Channel(Addr(0), client))->Pipeline(&ctx);
    v1::StageUpstream up_msg;
    EXPECT_FALSE(stream->Read(&up_msg));
    const grpc::Status st = stream->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  }
  // The last stage's Results stream likewise.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    auto stream = v1::Stage::NewStub(Channel(Addr(1), client))->Results(&ctx);
    v1::ResultsDownstream msg;
    EXPECT_FALSE(stream->Read(&msg));
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }

  // ---- The CLI clients with --tls-dir and --api-key ------------------------------------------
  const std::string cli = testing::BinPath("pipeinfer");
  const std::string http = "127.0.0.1:" + std::to_string(http_port_);
  const auto run = [](const std::vector<std::string>& argv) {
    return testing::RunCmd(argv, std::chrono::seconds(60));
  };
  CommandResult c = run({cli, "chat", "hi", "--router-http", http, "--max-tokens", "3",
                         "--temperature", "0", "--tls-dir", tls, "--api-key", kKey});
  EXPECT_EQ(c.exit_code, 0) << c.output;
  c = run({cli, "chat", "hi", "--router-http", http, "--max-tokens", "3", "--tls-dir", tls});
  EXPECT_NE(c.exit_code, 0) << c.output;  // no key: 401
  c = run({cli, "complete", "--router", router_grpc, "-p", "hello", "-n", "3", "--tls-dir", tls,
           "--api-key", kKey});
  EXPECT_EQ(c.exit_code, 0) << c.output;
  c = run({cli, "complete", "--router", router_grpc, "-p", "hello", "-n", "3", "--tls-dir", tls,
           "--api-key", kWrongKey});
  EXPECT_NE(c.exit_code, 0) << c.output;
  c = run({cli, "stats", "--stage", Addr(0), "--tls-dir", tls});
  EXPECT_EQ(c.exit_code, 0) << c.output;
  c = run({cli, "stats", "--stage", Addr(0)});  // plaintext to a TLS stage
  EXPECT_NE(c.exit_code, 0) << c.output;
  c = run({cli, "stats", "--router", router_grpc, "--tls-dir", tls, "--api-key", kKey});
  EXPECT_EQ(c.exit_code, 0) << c.output;
  // The state file records the certificate folder and the keys file: `status` probes over TLS and
  // `chat --state` finds the router, its CA and a key without --tls-dir or --api-key.
  c = run({cli, "status", "--state", state_, "--json"});
  EXPECT_EQ(c.exit_code, 0) << c.output;
  {
    const json s = json::parse(c.output, nullptr, false);
    ASSERT_FALSE(s.is_discarded()) << c.output;
    EXPECT_EQ(s.value("tls", false), true) << c.output;
    EXPECT_EQ(s.value("tls_dir", ""), tls) << c.output;
    EXPECT_EQ(s.value("healthy", false), true) << c.output;
  }
  c = run({cli, "chat", "hi", "--state", state_, "--max-tokens", "3", "--temperature", "0"});
  EXPECT_EQ(c.exit_code, 0) << c.output;

  // ---- The cluster still serves, and no key reached a log --------------------------------------
  {
    auto r = https.Post("/v1/chat/completions", {{"Authorization", std::string("Bearer ") + kKey}},
                        body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
  }
  int logs = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_ + "/logs")) {
    const std::string text = ReadText(e.path().string());
    ++logs;
    EXPECT_EQ(text.find(kKey), std::string::npos) << e.path();
    EXPECT_EQ(text.find(kWrongKey), std::string::npos) << e.path();
  }
  EXPECT_GE(logs, 4);
  EXPECT_NE(ReadText(dir_ + "/logs/router.log").find("status=401"), std::string::npos);
}

}  // namespace
}  // namespace pipeinfer
