// Parallel generation on one GPU (several workers of one process) with CUDA graphs against the same generation
// eager: full passes and stale-activation steps (pipeline steps, split-branch CFG steps) replayed from graphs must
// give the eager latents; CFG workers must give the sequential latents. Skipped without CUDA.
#include <chrono>

#include <gtest/gtest.h>

#include <torch/torch.h>

#include <caf/all.hpp>

#include "actors/hybridiff.hpp"
#include "test_support.hpp"

namespace hybridiff {
namespace {

// Each replay equals its eager call within 1e-5 (fp32, tests/gpu/cuda_graph_test.cpp); 8 steps of a sampler
// carry that forward: 1e-4 relative on the final latents.
constexpr double graphs_vs_eager_tolerance = 1e-4;

struct schedule_case {
  std::string model, name;
  parallel_options options;
};

std::vector<schedule_case> schedules() {
  std::vector<schedule_case> cases;
  for (const std::string model : {"tiny-sdxl", "tiny-sd3"}) {
    parallel_options asyncdiff;
    asyncdiff.mode = parallel_mode::asyncdiff;
    apply_worker_defaults(asyncdiff, std::nullopt, 2);
    cases.push_back({model, "asyncdiff n=2", asyncdiff});
    asyncdiff.stride = 2;
    apply_worker_defaults(asyncdiff, std::nullopt, 2);
    cases.push_back({model, "asyncdiff n=2 stride 2", asyncdiff});
    // SDXL: 4 workers, split branches in CFG steps, n = 4 in the window; tiny-sd3 has 2 blocks: 2 workers, n = 2.
    parallel_options hybrid;
    hybrid.mode = parallel_mode::hybrid;
    apply_worker_defaults(hybrid, model == "tiny-sdxl" ? 4 : 2, std::nullopt);
    hybrid.warmup = 1;
    hybrid.tau1 = 3;
    hybrid.tau2 = 5;
    cases.push_back({model, "hybrid, window 3-5, " + std::to_string(hybrid.workers) + " workers", hybrid});
  }
  // SD3 with 4 blocks (test::deeper_tiny_sd3): split branches of 2 blocks per component (the second passes through
  // block 0, which it does not receive) and a 4-stage window of one block each.
  parallel_options hybrid;
  hybrid.mode = parallel_mode::hybrid;
  apply_worker_defaults(hybrid, 4, std::nullopt);
  hybrid.warmup = 1;
  hybrid.tau1 = 3;
  hybrid.tau2 = 5;
  cases.push_back({"sd3, 4 blocks", "hybrid, window 3-5, 4 workers", hybrid});
  return cases;
}

TEST(ParallelCudaGraphs, StaleActivationStepsReplayedEqualEagerOnes) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const test::full_float32_convolutions float32;
  caf::actor_system_config config;
  caf::actor_system system{config};
  const c10::Device cuda(c10::kCUDA, 0);
  const auto request = test::tiny_request(8);
  std::map<std::string, std::shared_ptr<models::diffusion_pipeline>> loaded;
  for (const auto& [model, name, options] : schedules()) {
    auto& pipeline = loaded[model];
    if (!pipeline)
      pipeline = model == "sd3, 4 blocks" ? test::deeper_tiny_sd3(4, {cuda, at::kFloat, ""})
                                          : models::load_pipeline(test::fixtures_dir() / model, {cuda, at::kFloat, ""});
    std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas(options.workers, pipeline);
    auto eager = generate_parallel(system, replicas, request, options);
    auto graphed_options = options;
    graphed_options.cuda_graphs = true;
    auto graphed = generate_parallel(system, replicas, request, graphed_options);
    ASSERT_EQ(graphed.trace.size(), eager.trace.size());
    std::string modes;
    for (const auto& row : graphed.trace) modes += row.mode + " ";
    EXPECT_NE(modes.find("pipeline"), std::string::npos) << model << ", " << name << ": " << modes;
    EXPECT_LT(test::relative_error(graphed.latents.cpu(), eager.latents.cpu()), graphs_vs_eager_tolerance)
        << model << ", " << name;
  }
}

// Two CFG workers on one GPU, each on a stream of its own, must give the latents of the same request batched on one
// worker (fp32: 1e-4 relative, as above; a prediction read before its worker's kernels ended would be off by far
// more), eager and replayed from graphs, and each worker's times add up to no more than the image's (a worker's
// request for a step leaves during the step before, so its time may straddle the boundary). 256² so that a step's
// kernels run long enough for an early read to show.
TEST(ParallelOnOneGpu, CfgWorkersEqualTheBatchedSequentialSteps) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const test::full_float32_convolutions float32;
  caf::actor_system_config config;
  caf::actor_system system{config};
  const c10::Device cuda(c10::kCUDA, 0);
  const std::shared_ptr<models::diffusion_pipeline> pipeline =
      models::load_pipeline(test::fixtures_dir() / "tiny-sdxl", {cuda, at::kFloat, ""});
  const std::vector<std::shared_ptr<models::diffusion_pipeline>> one{pipeline}, two{pipeline, pipeline};
  auto request = test::tiny_request(6);
  request.height = request.width = 256;
  parallel_options sequential;
  auto expected = generate_parallel(system, one, request, sequential);
  parallel_options cfg;
  cfg.mode = parallel_mode::cfg;
  apply_worker_defaults(cfg, 2, std::nullopt);
  for (const bool graphs : {false, true}) {
    cfg.cuda_graphs = graphs;
    const auto began = std::chrono::steady_clock::now();
    auto result = generate_parallel(system, two, request, cfg);
    const double image_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - began).count();
    EXPECT_LT(test::relative_error(result.latents.cpu(), expected.latents.cpu()), graphs_vs_eager_tolerance)
        << (graphs ? "graphs" : "eager");
    std::vector<double> busy(2, 0.0);
    for (const auto& row : result.trace) {
      for (int w : {0, 1}) {
        EXPECT_GT(row.worker_ms[w], 0.0) << "worker " << w << ", step " << row.step;
        busy[w] += row.worker_ms[w];
      }
    }
    for (int w : {0, 1}) EXPECT_LE(busy[w], image_ms) << "worker " << w;
  }
}

}  // namespace
}  // namespace hybridiff
