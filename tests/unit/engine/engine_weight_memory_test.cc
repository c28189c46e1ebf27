// Where a CPU stage reads its weights (EngineOptions::weight_memory): a copy in transparent huge
// pages (the default) or the file's mapping. The copy must not change a single bit of the
// results, every layer matrix and the head must point into it (a tied embedding shares the head's
// copy; an untied one stays in the mapping), stored in the layout the kernels want (Q4_0 in
// groups of 8 rows on the avx512-vnni path), and the engine must really compute from it: spoiling
// the copy changes the logits.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/huge_pages.h"
#include "engine/engine.h"
#include "kernels/interleave.h"
#include "testing/fixtures.h"

namespace pipeinfer::engine {
namespace {

using pipeinfer::testing::FixturePath;

std::unique_ptr<Engine> Make(const std::string& model, WeightMemory memory) {
  auto m = StageModel::LoadFull(FixturePath("models/" + model + ".gguf"));
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return nullptr;
  EngineOptions o;
  o.threads = 2;
  o.kv_capacity_tokens = 128;
  o.weight_memory = memory;
  auto e = Engine::Create(std::move(*m), o);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(*e) : nullptr;
}

// A 12-token prompt (every row's logits) and 4 greedy steps.
std::vector<float> Logits(Engine& e, uint64_t session) {
  std::vector<float> all;
  const int64_t V = e.model().hparams().n_vocab;
  EXPECT_TRUE(e.kv().OpenSession(session).ok());
  std::vector<int32_t> prompt, rows;
  for (int i = 0; i < 12; ++i) {
    prompt.push_back(3 + (i * 37 + 5) % 200);
    rows.push_back(i);
  }
  ForwardInput in;
  in.session = session;
  in.tokens = prompt;
  in.output_rows = rows;
  auto out = e.Forward(in);
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return all;
  all = out->logits;
  const std::vector<int32_t> last = {0};
  int32_t next = static_cast<int32_t>(std::max_element(all.end() - V, all.end()) - (all.end() - V));
  for (int step = 0; step < 4; ++step) {
    ForwardInput s;
    s.session = session;
    s.tokens = std::span<const int32_t>(&next, 1);
    s.output_rows = last;
    auto o = e.Forward(s);
    EXPECT_TRUE(o.ok()) << o.status();
    if (!o.ok()) return all;
    all.insert(all.end(), o->logits.begin(), o->logits.end());
    next = static_cast<int32_t>(std::max_element(o->logits.begin(), o->logits.end()) -
                                o->logits.begin());
  }
  return all;
}

bool Inside(const uint8_t* p, const uint8_t* begin, size_t size) {
  return p >= begin && p < begin + size;
}

class WeightMemoryTest : public ::testing::TestWithParam<std::string> {};

TEST_P(WeightMemoryTest, CopyInHugePagesGivesTheSameBitsAndIsWhatTheEngineReads) {
  const std::string thp = TransparentHugePageMode();
  auto mapped = Make(GetParam(), WeightMemory::kMapped);
  auto copied = Make(GetParam(), WeightMemory::kHugePages);
  ASSERT_TRUE(mapped && copied);
  std::printf("%s | %s\n", mapped->WeightDescription().c_str(),
              copied->WeightDescription().c_str());

  // The mapped engine reads the file; nothing was copied.
  const StageModel& mm = mapped->model();
  EXPECT_EQ(mm.weight_buffer().data(), nullptr);
  const gguf::TensorInfo* q0 = mm.file().FindTensor("blk.0.attn_q.weight");
  ASSERT_NE(q0, nullptr);
  EXPECT_EQ(mm.layer(0).wq.data, q0->data);

  const std::vector<float> a = Logits(*mapped, 1);
  const std::vector<float> b = Logits(*copied, 1);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
      << "the copy changed the results";

  const StageModel& cm = copied->model();
  if ((thp.empty() || thp == "never") && !mm.WantsGroupedLayout()) {
    EXPECT_EQ(cm.weight_buffer().data(), nullptr)
        << "no copy without transparent huge pages, unless the kernels want grouped rows";
    GTEST_SKIP() << "transparent huge pages are " << (thp.empty() ? "missing" : "off");
  }
  const HugePageBuffer& buf = cm.weight_buffer();
  ASSERT_NE(buf.data(), nullptr);
  uint64_t matrix_bytes = 0, grouped_bytes = 0;
  for (int32_t l = 0; l < cm.n_layers(); ++l) {
    const LayerWeights& w = cm.layer(l);
    for (const kernels::Matrix* m : w.matrices()) {
      EXPECT_TRUE(Inside(m->data, buf.data(), buf.size())) << "layer " << l;
      // Stored in the layout the kernels want (Q4_0 in groups of 8 rows on avx512-vnni, F16 on
      // avx512).
      EXPECT_EQ(m->interleave, kernels::PreferredRowInterleave(m->type, m->rows, m->cols))
          << "layer " << l;
      if (m->interleave != 1) grouped_bytes += m->rows * m->row_bytes;
      EXPECT_TRUE(Inside(m->data + m->rows * m->row_bytes - 1, buf.data(), buf.size()));
      matrix_bytes += m->rows * m->row_bytes;
    }
  }
  EXPECT_TRUE(Inside(cm.output().data, buf.data(), buf.size()));
  const bool tied = mm.output().data == mm.token_embd().data;
  EXPECT_EQ(cm.output().data == cm.token_embd().data, tied) << "a tied head shares one copy";
  // An untied embedding (a row per token) stays in the file mapping.
  EXPECT_EQ(Inside(cm.token_embd().data, buf.data(), buf.size()), tied);
  if (!tied) {
    EXPECT_EQ(cm.token_embd().data, cm.file().FindTensor("token_embd.weight")->data);
  }
  matrix_bytes += cm.output().rows * cm.output().row_bytes;
  EXPECT_EQ(cm.output().interleave,
            kernels::PreferredRowInterleave(cm.output().type, cm.output().rows, cm.output().cols));
  if (cm.output().interleave != 1) grouped_bytes += cm.output().rows * cm.output().row_bytes;
  EXPECT_EQ(cm.grouped_bytes(), grouped_bytes);
  if (GetParam() == "tiny-q4_0-pure" &&
      kernels::PreferredRowInterleave(gguf::TensorType::kQ4_0, 64, 256) != 1) {
    EXPECT_GT(grouped_bytes, 0u) << "the Q4_0 matrices were not grouped";
  }
  for (int32_t l = 0; l < mm.n_layers(); ++l) EXPECT_EQ(mm.layer(l).wq.interleave, 1);
  EXPECT_GE(buf.size(), matrix_bytes);
  EXPECT_LT(buf.size(), matrix_bytes + 18 * 64 * cm.n_layers() + HugePageBuffer::kHugePage);

  // Spoil the copy of layer 0's W_q: the copied engine's results change, the mapped one's do not.
  const kernels::Matrix& wq = cm.layer(0).wq;
  std::memset(const_cast<uint8_t*>(wq.data), 0, wq.rows * wq.row_bytes);
  const std::vector<float> spoiled = Logits(*copied, 2);
  ASSERT_EQ(spoiled.size(), a.size());
  EXPECT_NE(std::memcmp(a.data(), spoiled.data(), a.size() * sizeof(float)), 0);
  const std::vector<float> again = Logits(*mapped, 2);
  EXPECT_EQ(std::memcmp(a.data(), again.data(), a.size() * sizeof(float)), 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, WeightMemoryTest,
                         ::testing::Values("tiny-f16", "tiny-q4_k_m", "tiny-q8_0", "tiny-q4_0-pure",
                                           "llama3-tiny-f16", "qwen2-tiny-f16"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace pipeinfer::engine
