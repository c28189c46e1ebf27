// The wire contract as compiled: services exist with the documented streaming shapes, messages
// round-trip, and the generated library links on its own.
#include <gtest/gtest.h>

#include "google/protobuf/descriptor.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "pipeinfer/v1/draft.grpc.pb.h"
#include "pipeinfer/v1/router.grpc.pb.h"
#include "pipeinfer/v1/stage.grpc.pb.h"

namespace {

using google::protobuf::DescriptorPool;
using google::protobuf::MethodDescriptor;

const MethodDescriptor* Method(const std::string& service, const std::string& method) {
  // Touch one message of every file so the linker keeps their descriptors.
  (void)pipeinfer::v1::ChatRequest::descriptor();
  (void)pipeinfer::v1::GenerateRequest::descriptor();
  (void)pipeinfer::v1::StageDownstream::descriptor();
  (void)grpc::health::v1::HealthCheckRequest::descriptor();
  const auto* s = DescriptorPool::generated_pool()->FindServiceByName(service);
  EXPECT_NE(s, nullptr) << service;
  if (!s) return nullptr;
  const auto* m = s->FindMethodByName(method);
  EXPECT_NE(m, nullptr) << service << "." << method;
  return m;
}

void ExpectShape(const std::string& service, const std::string& method, bool client_stream,
                 bool server_stream) {
  const auto* m = Method(service, method);
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->client_streaming(), client_stream) << service << "." << method;
  EXPECT_EQ(m->server_streaming(), server_stream) << service << "." << method;
}

TEST(ProtoContract, ServicesHaveTheDocumentedShapes) {
  ExpectShape("pipeinfer.v1.Router", "Chat", false, true);
  ExpectShape("pipeinfer.v1.Router", "Complete", false, true);
  ExpectShape("pipeinfer.v1.Router", "ListModels", false, false);
  ExpectShape("pipeinfer.v1.Router", "GetClusterStats", false, false);
  ExpectShape("pipeinfer.v1.Draft", "Generate", false, true);
  ExpectShape("pipeinfer.v1.Draft", "GetStats", false, false);
  ExpectShape("pipeinfer.v1.Stage", "Pipeline", true, true);
  ExpectShape("pipeinfer.v1.Stage", "Results", true, true);
  ExpectShape("pipeinfer.v1.Stage", "GetStats", false, false);
  ExpectShape("grpc.health.v1.Health", "Check", false, false);
  ExpectShape("grpc.health.v1.Health", "Watch", false, true);
}

TEST(ProtoContract, PipelineMessagesCarryEveryKind) {
  // Downstream: session open/close, runs, KV ops, tombstones. Upstream: cancels, credits, errors.
  const auto* down = pipeinfer::v1::StageDownstream::descriptor();
  for (const char* f : {"session_open", "session_close", "run", "kv", "tombstone"}) {
    EXPECT_NE(down->FindFieldByName(f), nullptr) << f;
  }
  const auto* up = pipeinfer::v1::StageUpstream::descriptor();
  for (const char* f : {"cancel", "credit", "error"}) {
    EXPECT_NE(up->FindFieldByName(f), nullptr) << f;
  }
  const auto* kv = pipeinfer::v1::KvOp::descriptor();
  for (const char* f : {"fork", "commit", "release"}) {
    EXPECT_NE(kv->FindFieldByName(f), nullptr) << f;
  }
}

TEST(ProtoContract, RunRoundTrips) {
  pipeinfer::v1::StageDownstream msg;
  auto* run = msg.mutable_run();
  run->set_run_id(42);
  run->set_session_id(7);
  for (uint32_t i = 0; i < 4; ++i) {
    run->add_token_ids(100 + i);
    run->add_positions(10 + i);
  }
  std::string wire;
  ASSERT_TRUE(msg.SerializeToString(&wire));
  pipeinfer::v1::StageDownstream back;
  ASSERT_TRUE(back.ParseFromString(wire));
  ASSERT_TRUE(back.has_run());
  EXPECT_EQ(back.run().run_id(), 42u);
  EXPECT_EQ(back.run().token_ids_size(), 4);
  EXPECT_EQ(back.run().positions(3), 13u);
  // Garbage does not parse as a message silently producing a run.
  pipeinfer::v1::StageDownstream junk;
  EXPECT_FALSE(junk.ParseFromString(std::string("\xff\xff\xff\xff\xff", 5)));
}

}  // namespace
