// The driver's end of a CFG step on the CPU: the guided prediction and the means of the tau controller's rel-MAE
// against ATen's ops (the CUDA kernels are checked in tests/gpu/guidance_test.cpp).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/nn/nn.hpp"

namespace hybridiff::models {
namespace {

// The CPU path sums in double where ATen's float32 mean sums in float32: equal to float32 rounding (1e-6).
TEST(Guidance, CpuPathEqualsAtenOps) {
  torch::manual_seed(0);
  for (std::int64_t count : {1, 7, 4 * 32 * 32}) {
    const auto uncond = torch::randn({count}) * 2, cond = torch::randn({count});
    const auto measured = guide_and_measure(uncond, cond, 4.5);
    const auto means = measured.means();
    EXPECT_TRUE(torch::equal(measured.guided, uncond + 4.5 * (cond - uncond))) << count;
    const double difference = (cond - uncond).abs().mean().item<double>(), base = uncond.abs().mean().item<double>();
    EXPECT_NEAR(means.mean_abs_difference, difference, difference * 1e-6) << count;
    EXPECT_NEAR(means.mean_abs_uncond, base, base * 1e-6) << count;
  }
  EXPECT_THROW(guide_and_measure(torch::zeros({4}), torch::zeros({5}), 1.0), c10::Error);
}

}  // namespace
}  // namespace hybridiff::models
