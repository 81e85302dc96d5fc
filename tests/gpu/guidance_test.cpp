// The driver's guidance kernels (models/nn/guide_measure.cu) against ATen's ops on CUDA: the guided prediction bit
// for bit, the rel-MAE's means as ATen's mean gives them, the same metric on every run. Labelled `gpu`; skipped
// without a CUDA device.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/nn/nn.hpp"

namespace hybridiff::models {
namespace {

class GuidanceOnCuda : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

// ATen's mean sums in float32 in an order of its own, then rounds to the dtype: the kernels' sums differ from it in
// float32's last bits, which the rounding to fp16 / bf16 hides but where a sum lands within them of a rounding
// boundary (one unit in the last place: 2^-10, 2^-7 relative); float32 keeps them (1e-6).
double mean_tolerance(at::ScalarType type) {
  return type == at::kHalf ? 1.0 / 1024 : type == at::kBFloat16 ? 1.0 / 128 : 1e-6;
}

TEST_P(GuidanceOnCuda, EqualsAtenOpsAndRepeatsItsMetric) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const auto options = at::TensorOptions(torch::kCUDA).dtype(GetParam());
  // A tail, one SDXL 1024² latent [1, 4, 128, 128] with a tail, a batch of two, and an unaligned view (ATen's path).
  for (std::int64_t count : {7, 4 * 128 * 128 + 3, 2 * 4 * 128 * 128}) {
    for (bool aligned : {true, false}) {
      const auto u_storage = (torch::randn({count + 1}, torch::kCUDA) * 2).to(options);
      const auto c_storage = torch::randn({count + 1}, torch::kCUDA).to(options);
      const auto uncond = u_storage.narrow(0, aligned ? 0 : 1, count),
                 cond = c_storage.narrow(0, aligned ? 0 : 1, count);
      const auto measured = guide_and_measure(uncond, cond, 7.5);
      EXPECT_TRUE(torch::equal(measured.guided, uncond + 7.5 * (cond - uncond))) << count << " " << aligned;
      const double difference = (cond - uncond).abs().mean().item<double>(), base = uncond.abs().mean().item<double>();
      EXPECT_NEAR(measured.mean_abs_difference, difference, difference * mean_tolerance(GetParam())) << count;
      EXPECT_NEAR(measured.mean_abs_uncond, base, base * mean_tolerance(GetParam())) << count;
      const auto again = guide_and_measure(uncond, cond, 7.5);
      EXPECT_EQ(again.mean_abs_difference, measured.mean_abs_difference);
      EXPECT_EQ(again.mean_abs_uncond, measured.mean_abs_uncond);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GuidanceOnCuda, ::testing::Values(at::kFloat, at::kHalf, at::kBFloat16));

}  // namespace
}  // namespace hybridiff::models
