// The CUDA fp16/bf16 path against the float32 CPU path and the diffusers goldens on tiny-sdxl. Labelled `gpu`:
// CI (no GPU) excludes it with `ctest -LE gpu`; on a machine without CUDA every test here is skipped.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/nn/nn.hpp"
#include "models/pipelines/pipeline.hpp"
#include "models/networks/sd3_transformer.hpp"
#include "models/networks/unet.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

// Relative tolerances (max|a−b| / max|b|) of reduced precision against float32: fp16 keeps 11 mantissa bits,
// bf16 8; a UNet call accumulates the rounding of ~100 layers.
constexpr double fp16_tolerance = 2e-2;
constexpr double bf16_tolerance = 6e-2;
const char* golden_file = "tiny-sdxl-golden.safetensors";

class CudaParity : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
  double tolerance() const { return GetParam() == at::kHalf ? fp16_tolerance : bf16_tolerance; }
};

TEST_P(CudaParity, UnetMatchesCpuFloat32) {
  torch::NoGradGuard no_grad;
  const c10::Device cuda(c10::kCUDA, 0);
  auto unet = load_unet(test::fixtures_dir() / "tiny-sdxl/unet", {cuda, GetParam(), ""});
  auto on_gpu = [&](const std::string& key) { return test::golden(golden_file, key).to(cuda, GetParam()); };
  auto out = unet->forward(on_gpu("unet_in_x"), test::golden(golden_file, "unet_in_t").to(cuda),
                           {on_gpu("unet_in_ctx"), on_gpu("unet_in_text_embeds"), on_gpu("unet_in_time_ids")});
  EXPECT_LT(test::relative_error(out, test::golden(golden_file, "unet_out")), tolerance());
}

TEST_P(CudaParity, PipelineLatentsMatchDiffusers) {
  auto pipeline = load_pipeline(test::fixtures_dir() / "tiny-sdxl", {c10::Device(c10::kCUDA, 0), GetParam(), ""});
  generation_request request;
  request.prompt = "astronaut in a jungle, cold color palette, muted colors, detailed, 8k";
  request.steps = 8;
  request.guidance = 5.0;
  request.height = request.width = 32;
  request.initial_latents = test::golden(golden_file, "pipe_init_latents");
  auto latents = generate_latents(*pipeline, request);
  EXPECT_LT(test::relative_error(latents, test::golden(golden_file, "pipe_euler_latents")), tolerance());
  auto image = pipeline->decode(latents);
  EXPECT_TRUE(torch::isfinite(image).all().item<bool>());
}

TEST_P(CudaParity, Sd3TransformerMatchesDiffusers) {
  torch::NoGradGuard no_grad;
  const c10::Device cuda(c10::kCUDA, 0);
  const char* sd3_golden = "tiny-sd3-golden.safetensors";
  auto transformer = load_sd3_transformer(test::fixtures_dir() / "tiny-sd3/transformer", {cuda, GetParam(), ""});
  auto on_gpu = [&](const std::string& key) { return test::golden(sd3_golden, key).to(cuda, GetParam()); };
  auto out = transformer->forward(on_gpu("tr_in_x"), test::golden(sd3_golden, "tr_in_t").to(cuda), on_gpu("tr_in_ctx"),
                                  on_gpu("tr_in_pooled"));
  EXPECT_LT(test::relative_error(out, test::golden(sd3_golden, "tr_out")), tolerance());
}

// SD3.5's qk_norm (RMSNorm of each head's q and k, written back into the joint buffers) and dual attention on CUDA:
// tests/golden/sd35's transformer against diffusers' float32 output.
TEST_P(CudaParity, Sd35TransformerMatchesDiffusers) {
  torch::NoGradGuard no_grad;
  const c10::Device cuda(c10::kCUDA, 0);
  const auto sd35 = std::filesystem::path(HYBRIDIFF_SOURCE_DIR) / "tests/golden/sd35";
  auto transformer = load_sd3_transformer(sd35 / "transformer", {cuda, GetParam(), ""});
  const char* sd3_golden = "tiny-sd3-golden.safetensors";
  auto on_gpu = [&](const std::string& key) { return test::golden(sd3_golden, key).to(cuda, GetParam()); };
  auto out = transformer->forward(on_gpu("tr_in_x"), test::golden(sd3_golden, "tr_in_t").to(cuda), on_gpu("tr_in_ctx"),
                                  on_gpu("tr_in_pooled"));
  const auto golden = models::checkpoint::open(sd35 / "tiny-sd35-golden.safetensors").tensor("tr_out");
  EXPECT_LT(test::relative_error(out, golden), tolerance());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaParity, ::testing::Values(at::kHalf, at::kBFloat16));

// The fused GEMM + bias + GELU of models::linear_gelu_tanh computes the tanh approximation on CUDA (cuBLASLt's
// epilogue), as SD3's feed-forward needs: float32, against the two-op reference within 1e-5 absolute (the exact GELU
// differs from it by up to ~5e-4 on these values, so a wrong approximation would fail).
TEST(CudaLinearGelu, FusedEpilogueIsTheTanhApproximation) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  auto layer = linear(64, 256);
  layer->to(c10::Device(c10::kCUDA, 0));
  auto x = torch::randn({2, 37, 64}, torch::TensorOptions().device(torch::kCUDA)) * 3;
  auto fused = linear_gelu_tanh(layer, x);
  ASSERT_EQ(fused.sizes(), (std::vector<std::int64_t>{2, 37, 256}));
  auto projected = layer(x);
  EXPECT_LT((fused - torch::gelu(projected, "tanh")).abs().max().item<double>(), 1e-5);
  EXPECT_GT((torch::gelu(projected) - torch::gelu(projected, "tanh")).abs().max().item<double>(), 1e-4);
}

}  // namespace
}  // namespace hybridiff::models
