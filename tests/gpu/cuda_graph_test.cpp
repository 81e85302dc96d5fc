// CUDA-graph replays of the denoiser against eager calls on the GPU, and the whole sequential pipeline with
// graphs against the diffusers golden (tiny-sdxl, tiny-sd3). Skipped without CUDA.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/pipelines/pipeline.hpp"
#include "runtime/cuda_graph.hpp"
#include "test_support.hpp"

namespace hybridiff::runtime {
namespace {

// A replay runs the kernels of the captured eager call on the same inputs: equal up to the order of floating-point
// reductions that cuDNN/cuBLAS may pick per call (fp32: 1e-5 relative).
constexpr double replay_tolerance = 1e-5;

class CudaGraphs : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(CudaGraphs, ReplaysEqualEagerCallsForEveryShapeAndInput) {
  torch::NoGradGuard no_grad;
  const test::full_float32_convolutions float32;
  const c10::Device cuda(c10::kCUDA, 0);
  auto pipeline = models::load_pipeline(test::fixtures_dir() / GetParam(), {cuda, at::kFloat, ""});
  models::generation_request request;
  request.prompt = "a red fox";
  request.height = request.width = 64;
  const auto plan = pipeline->plan(request);
  const auto both = pipeline->encode_prompt(request, plan);
  graphed_denoiser graphed(*pipeline);
  torch::manual_seed(0);
  const auto shape = pipeline->latent_shape(64, 64);
  for (const auto& cond : {both.negative, both.positive, models::branch_conditioning::stack(both.negative, both.positive)}) {
    const auto batch = cond.context.size(0);
    for (double t : {900.0, 500.0, 20.0}) {
      auto latents = torch::randn({batch, shape[1], shape[2], shape[3]}, cuda);
      auto timestep = torch::tensor(t, torch::TensorOptions().device(cuda));
      auto eager = pipeline->predict(latents, timestep, cond);
      auto replayed = graphed.predict(latents, timestep, cond);
      EXPECT_LT(test::relative_error(replayed.cpu(), eager.cpu()), replay_tolerance) << "batch " << batch << " t " << t;
    }
  }
  EXPECT_EQ(graphed.graphs(), 2u);  // batch 1 (both branches share a shape) and batch 2
}

INSTANTIATE_TEST_SUITE_P(Models, CudaGraphs, ::testing::Values("tiny-sdxl", "tiny-sd3"));

TEST(CudaGraphsOnCpu, AreAClearError) {
  auto pipeline = models::load_pipeline(test::fixtures_dir() / "tiny-sdxl", {});
  graphed_denoiser graphed(*pipeline);
  models::branch_conditioning none;
  EXPECT_THROW(graphed.predict(torch::zeros({1, 4, 8, 8}), torch::tensor(1.0), none), std::exception);
}

}  // namespace
}  // namespace hybridiff::runtime
