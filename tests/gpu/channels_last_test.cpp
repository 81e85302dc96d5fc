// The NHWC GroupNorm(+SiLU) kernels behind models::apply_group_norm against ATen's group_norm, and the
// channels-last UNet and VAE against the goldens and the same models in NCHW. Labelled `gpu`; skipped without a
// CUDA device.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/nn/nn.hpp"
#include "models/networks/unet.hpp"
#include "models/networks/vae.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

struct norm_case {
  std::int64_t batch, channels, height, width, groups;
  double mean = 0.0;  // added to every input value: a group mean far from 0 (the sums are shifted)
};

// ATen's GroupNorm (then SiLU) in float32 on the CPU: the reference.
at::Tensor reference(const torch::nn::GroupNorm& norm, const at::Tensor& x, bool silu) {
  auto cpu = torch::nn::GroupNorm(norm->options);
  cpu->weight.set_data(norm->weight.detach().to(torch::kCPU, torch::kFloat));
  cpu->bias.set_data(norm->bias.detach().to(torch::kCPU, torch::kFloat));
  auto y = cpu(x.to(torch::kCPU, torch::kFloat).contiguous());
  return silu ? torch::silu(y) : y;
}

class GroupNormNhwc : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
  // float32 sums over up to 16384·10 elements; fp16/bf16 round the output once.
  double tolerance() const { return test::rounding_tolerance(GetParam()); }
};

TEST_P(GroupNormNhwc, MatchesAtenForEveryShape) {
  torch::NoGradGuard no_grad;
  const c10::Device cuda(c10::kCUDA, 0);
  // SDXL's group sizes (10, 20, 40, 60, 80 channels), tiny-sdxl's (1, 2), odd spatial sizes, blocks 1024
  // threads wide (4096 float32 channels), a batch of 3, a large mean, one pixel.
  const std::vector<norm_case> cases = {{2, 320, 128, 128, 32},   {1, 32, 8, 8, 32},      {2, 64, 5, 7, 32},
                                        {3, 1280, 16, 16, 32},    {2, 2560, 8, 8, 32},    {2, 1920, 33, 31, 32},
                                        {1, 640, 64, 64, 32, 40.0}, {1, 4096, 2, 3, 32}, {2, 96, 1, 1, 3}};
  for (const auto& c : cases) {
    for (const bool silu : {false, true}) {
      SCOPED_TRACE("[" + std::to_string(c.batch) + ", " + std::to_string(c.channels) + ", " + std::to_string(c.height) +
                   ", " + std::to_string(c.width) + "], " + std::to_string(c.groups) + " groups, mean " +
                   std::to_string(c.mean) + (silu ? ", SiLU" : ""));
      auto norm = torch::nn::GroupNorm(torch::nn::GroupNormOptions(c.groups, c.channels).eps(1e-5));
      norm->weight.set_data(torch::randn({c.channels}) * 0.5 + 1.0);
      norm->bias.set_data(torch::randn({c.channels}) * 0.2);
      norm->to(cuda, GetParam());
      auto x = (torch::randn({c.batch, c.channels, c.height, c.width}) * 2.0 + c.mean)
                   .to(cuda, GetParam())
                   .contiguous(at::MemoryFormat::ChannelsLast);
      auto y = apply_group_norm(norm, x, silu);
      EXPECT_TRUE(y.is_contiguous(at::MemoryFormat::ChannelsLast));
      EXPECT_EQ(y.scalar_type(), GetParam());
      EXPECT_LT(test::relative_error(y.to(torch::kCPU, torch::kFloat), reference(norm, x, silu)), tolerance());
    }
  }
}

TEST_P(GroupNormNhwc, OtherLayoutsGoThroughAten) {
  torch::NoGradGuard no_grad;
  const c10::Device cuda(c10::kCUDA, 0);
  auto norm = torch::nn::GroupNorm(torch::nn::GroupNormOptions(4, 12).eps(1e-6));
  norm->to(cuda, GetParam());
  // NCHW, and channels-last with 12 channels in fp16/bf16 (not a multiple of the 8-element vector): ATen's path.
  for (auto layout : {at::MemoryFormat::Contiguous, at::MemoryFormat::ChannelsLast}) {
    auto x = torch::randn({2, 12, 6, 6}).to(cuda, GetParam()).contiguous(layout);
    auto y = apply_group_norm(norm, x, true);
    EXPECT_LT(test::relative_error(y.to(torch::kCPU, torch::kFloat), reference(norm, x, true)), tolerance());
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GroupNormNhwc, ::testing::Values(at::kFloat, at::kHalf, at::kBFloat16));

TEST(ChannelsLastUnet, MatchesTheNchwUnetInFloat32) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::NoGradGuard no_grad;
  const c10::Device cuda(c10::kCUDA, 0);
  const char* golden = "tiny-sdxl-golden.safetensors";
  auto channels_last = load_unet(test::fixtures_dir() / "tiny-sdxl/unet", {cuda, at::kFloat, ""});
  ASSERT_TRUE(channels_last->channels_last());
  auto nchw = load_unet(test::fixtures_dir() / "tiny-sdxl/unet");  // CPU load, then moved: stays NCHW
  nchw->to(cuda);
  ASSERT_FALSE(nchw->channels_last());
  auto on_gpu = [&](const std::string& key) { return test::golden(golden, key).to(cuda); };
  const UNet2DConditionModelImpl::conditioning cond{on_gpu("unet_in_ctx"), on_gpu("unet_in_text_embeds"),
                                                    on_gpu("unet_in_time_ids")};
  // In TF32 (cuDNN's default) the channels-last UNet was 6.7e-4 off the goldens on an H100.
  const test::full_float32_convolutions float32;
  auto a = channels_last->forward(on_gpu("unet_in_x"), on_gpu("unet_in_t"), cond);
  auto b = nchw->forward(on_gpu("unet_in_x"), on_gpu("unet_in_t"), cond);
  EXPECT_TRUE(a.is_contiguous());  // ε in the standard layout
  EXPECT_LT(test::relative_error(a, b), 1e-4);
  EXPECT_LT(test::relative_error(a.cpu(), test::golden(golden, "unet_out")), 1e-4);
}

TEST(ChannelsLastVae, DecodesAndEncodesAsTheNchwVaeInFloat32) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::NoGradGuard no_grad;
  const test::full_float32_convolutions float32;
  const c10::Device cuda(c10::kCUDA, 0);
  const char* golden = "tiny-sdxl-golden.safetensors";
  auto channels_last = load_vae(test::fixtures_dir() / "tiny-sdxl/vae", {cuda, at::kFloat, ""});
  ASSERT_TRUE(channels_last->channels_last());
  auto image = channels_last->decode(test::golden(golden, "vae_in_latents").to(cuda));
  EXPECT_TRUE(image.is_contiguous());
  EXPECT_LT(test::relative_error(image.cpu(), test::golden(golden, "vae_out_image")), 1e-4);
  auto nchw = load_vae(test::fixtures_dir() / "tiny-sdxl/vae");
  nchw->to(cuda);
  auto latents = channels_last->encode_mean(image);
  EXPECT_TRUE(latents.is_contiguous());
  EXPECT_LT(test::relative_error(latents, nchw->encode_mean(image)), 1e-4);
}

}  // namespace
}  // namespace hybridiff::models
