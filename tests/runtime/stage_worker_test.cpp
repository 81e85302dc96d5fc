// What a worker reads and hands on in stale-activation steps (tiny-sdxl, tiny-sd3, float32 CPU): given only the
// other components' outputs its component computes on (asyncdiff_plan::inputs_of), a worker computes exactly what
// it computes given every module's output, and it hands on only what other components read.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "runtime/stage_worker.hpp"
#include "schedule/asyncdiff_plan.hpp"
#include "test_support.hpp"

namespace hybridiff::runtime {
namespace {

std::set<std::string> set_of(const std::vector<std::string>& names) { return {names.begin(), names.end()}; }

std::set<std::string> modules_of(const activation_cache& cache) {
  std::set<std::string> names;
  for (const auto& [module, value] : cache) names.insert(module);
  return names;
}

activation_cache only(const activation_cache& cache, const std::vector<std::string>& modules) {
  activation_cache kept;
  for (const auto& module : modules) kept.emplace(module, cache.at(module));
  return kept;
}

void expect_equal(const activation_cache& actual, const activation_cache& expected, const std::string& what) {
  ASSERT_EQ(modules_of(actual), modules_of(expected)) << what;
  for (const auto& [module, value] : expected)
    for (std::size_t i = 0; i < value.size(); ++i)
      EXPECT_TRUE(torch::equal(actual.at(module)[i], value[i])) << what << ": " << module << " output " << i;
}

class StageWorker : public ::testing::TestWithParam<std::string> {};

TEST_P(StageWorker, ComputesTheSameFromItsInputsAloneAndHandsOnOnlyWhatOthersRead) {
  torch::NoGradGuard no_grad;
  std::shared_ptr<models::diffusion_pipeline> pipeline = models::load_pipeline(test::fixtures_dir() / GetParam(), {});
  const auto split = runtime::split_plan(*pipeline, 2, 1);
  models::generation_request request;
  request.prompt = "a red fox";
  request.height = request.width = 32;
  request.max_sequence_length = 16;
  const auto plan = pipeline->plan(request);
  const auto both = pipeline->encode_prompt(request, plan);
  const auto stacked = models::branch_conditioning::stack(both.negative, both.positive);
  torch::manual_seed(0);
  const auto shape = pipeline->latent_shape(32, 32);
  const auto first = torch::randn({2, shape[1], shape[2], shape[3]}), other = torch::randn_like(first),
             next = torch::randn_like(first);
  const auto t_first = torch::tensor(700.0), t_next = torch::tensor(650.0);

  // Two copies of each component's worker, filled alike: one gets only its inputs, the other every module.
  std::vector<std::unique_ptr<stage_worker>> lean, full;
  for (int c = 0; c < 2; ++c)
    for (auto* group : {&lean, &full}) {
      auto worker = std::make_unique<stage_worker>(pipeline, c);
      worker->set_component(split_scope::window, set_of(split.components[c].modules), set_of(split.read_by_others(c)));
      worker->set_conditioning(stacked);
      worker->fill(first, t_first);
      group->push_back(std::move(worker));
    }
  EXPECT_EQ(modules_of(lean[1]->owned_outputs()), set_of(split.read_by_others(1)));
  EXPECT_EQ(modules_of(lean[0]->owned_outputs()), set_of(split.read_by_others(0)));
  // The other workers' outputs: every module's, from another image, so that they differ from what the workers
  // cached at their own fill (a needed input left out would show).
  stage_worker source(pipeline, 2);
  source.set_conditioning(stacked);
  source.fill(other, t_first);
  const auto everything = source.cache();
  for (int c = 0; c < 2; ++c) {
    const auto lean_out = lean[c]->pipeline_step(next, t_next, only(everything, split.inputs_of(c)));
    const auto full_out = full[c]->pipeline_step(next, t_next, everything);
    expect_equal(lean[c]->owned_outputs(), full[c]->owned_outputs(), GetParam() + " component " + std::to_string(c));
    if (c == split.output_component()) EXPECT_TRUE(torch::equal(lean_out, full_out)) << GetParam();
  }
}

INSTANTIATE_TEST_SUITE_P(Models, StageWorker, ::testing::Values("tiny-sdxl", "tiny-sd3"));

}  // namespace
}  // namespace hybridiff::runtime
