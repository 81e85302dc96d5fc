// The driver's end of a step on CUDA against ATen's ops: the guidance kernels (models/nn/guide_measure.cu), the
// guided prediction bit for bit, the rel-MAE's means as ATen's mean gives them, the same metric on every run; the
// Euler step kernel (models/nn/euler_step.cu) bit for bit. Labelled `gpu`; skipped without a CUDA device.
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
      const double difference = (cond - uncond).abs().mean().item<double>(), base = uncond.abs().mean().item<double>();
      const auto expected = uncond + 7.5 * (cond - uncond);
      const auto measured = guide_and_measure(uncond, cond, 7.5);
      // Work queued behind the measurement (as the sampler step is) does not reach the means read after it.
      const auto u_before = u_storage.clone(), c_before = c_storage.clone();
      u_storage.fill_(1000);
      c_storage.fill_(-1000);
      const auto means = measured.means();
      u_storage.copy_(u_before);
      c_storage.copy_(c_before);
      EXPECT_TRUE(torch::equal(measured.guided, expected)) << count << " " << aligned;
      EXPECT_NEAR(means.mean_abs_difference, difference, difference * mean_tolerance(GetParam())) << count;
      EXPECT_NEAR(means.mean_abs_uncond, base, base * mean_tolerance(GetParam())) << count;
      const auto again = guide_and_measure(uncond, cond, 7.5).means();
      EXPECT_EQ(again.mean_abs_difference, means.mean_abs_difference);
      EXPECT_EQ(again.mean_abs_uncond, means.mean_abs_uncond);
    }
  }
}

// The Euler sampler's ATen expression (diffusers' ops, σ as float32 host scalars as the sampler holds them).
at::Tensor euler_by_aten(const at::Tensor& sample, const at::Tensor& output, float sigma, float sigma_next) {
  const auto x = sample.to(torch::kFloat32);
  const auto s = torch::tensor(sigma), s_next = torch::tensor(sigma_next);
  const auto denoised = x - s * output;
  const auto derivative = (x - denoised) / s;
  return (x + derivative * (s_next - s)).to(output.scalar_type());
}

TEST_P(GuidanceOnCuda, EulerStepEqualsAtenOps) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const auto options = at::TensorOptions(torch::kCUDA).dtype(GetParam());
  // σ of an SDXL schedule's first, middle and last steps (the last to σ = 0).
  const std::vector<std::pair<float, float>> sigmas = {{14.6146f, 11.3577f}, {1.0373f, 0.8906f}, {0.0292f, 0.f}};
  for (std::int64_t count : {7, 4 * 128 * 128 + 3, 2 * 4 * 128 * 128}) {
    const auto sample = (torch::randn({count}, torch::kCUDA) * 8).to(options);
    const auto output = torch::randn({count}, torch::kCUDA).to(options);
    for (const auto& [sigma, sigma_next] : sigmas) {
      const auto next = euler_step_on_device(sample, output, sigma, sigma_next);
      ASSERT_TRUE(next.defined()) << count;
      EXPECT_TRUE(torch::equal(next, euler_by_aten(sample, output, sigma, sigma_next))) << count << " σ " << sigma;
    }
  }
  // Where the kernel does not apply, the caller is told so (it then runs ATen's ops).
  const auto storage = torch::randn({65}, options);
  EXPECT_FALSE(euler_step_on_device(storage.narrow(0, 1, 64), storage.narrow(0, 0, 64), 1.f, 0.5f).defined());
  if (GetParam() != torch::kFloat32)
    EXPECT_FALSE(euler_step_on_device(storage.to(torch::kFloat32), storage, 1.f, 0.5f).defined());
  EXPECT_FALSE(euler_step_on_device(storage.cpu(), storage.cpu(), 1.f, 0.5f).defined());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GuidanceOnCuda, ::testing::Values(at::kFloat, at::kHalf, at::kBFloat16));

}  // namespace
}  // namespace hybridiff::models
