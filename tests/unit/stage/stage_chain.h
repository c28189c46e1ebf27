// A chain of stage cores in one process (no transport), for the stage tests: Send() pushes one
// message through every stage and returns the last stage's outcomes.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "pipeinfer/v1/stage.pb.h"
#include "stage/stage_core.h"
#include "testing/fixtures.h"

namespace pipeinfer::stage {

class Pipeline {
 public:
  Pipeline(const std::string& model, uint32_t n_stages) {
    auto f = gguf::GgufFile::Open(pipeinfer::testing::FixturePath("models/" + model + ".gguf"));
    EXPECT_TRUE(f.ok());
    std::shared_ptr<gguf::GgufFile> file(std::move(*f));
    auto hp = gguf::LlamaHParams::FromGguf(*file);
    auto split = gguf::SplitLayers(hp->n_layer, n_stages);
    EXPECT_TRUE(split.ok());
    for (uint32_t i = 0; i < n_stages; ++i) {
      auto m = engine::StageModel::FromFile(file, (*split)[i]);
      EXPECT_TRUE(m.ok()) << m.status();
      engine::EngineOptions o;
      o.threads = 1;
      o.kv_capacity_tokens = 1024;
      auto e = engine::Engine::Create(std::move(*m), o);
      EXPECT_TRUE(e.ok());
      StageCoreConfig c;
      c.stage_index = i;
      c.n_stages = n_stages;
      c.hidden_dtype_out = i % 2 ? v1::DTYPE_F32 : v1::DTYPE_F32;
      stages_.push_back(std::make_unique<StageCore>(std::move(*e), c));
    }
  }

  std::vector<v1::ResultsDownstream> Send(const v1::StageDownstream& msg) {
    std::vector<v1::StageDownstream> cur = {msg};
    std::vector<v1::ResultsDownstream> results;
    for (auto& st : stages_) {
      std::vector<v1::StageDownstream> next;
      for (const auto& m : cur) {
        StageOutput o = st->Handle(m);
        for (auto& e : o.errors) errors_.push_back(*e);
        for (auto& f : o.forward) next.push_back(*f);
        for (auto& r : o.results) results.push_back(*r);
      }
      cur = std::move(next);
    }
    return results;
  }

  StageCore& stage(size_t i) { return *stages_[i]; }
  size_t size() const { return stages_.size(); }
  const std::vector<v1::ErrorDetail>& errors() const { return errors_; }

 private:
  std::vector<std::unique_ptr<StageCore>> stages_;
  std::vector<v1::ErrorDetail> errors_;
};

}  // namespace pipeinfer::stage
