// The float8 path on CUDA: our quantization kernels against e4m3's rounding bound, cuBLASLt's scaled GEMM against
// the float32 layer, and the fixture models in fp8 (eager, CUDA graphs, and against the diffusers goldens).
// Labelled `gpu`; skipped without a CUDA device.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/nn/nn.hpp"
#include "models/pipelines/pipeline.hpp"
#include "runtime/cuda_graph.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

// e4m3 keeps 3 mantissa bits: a normal value rounds within 2^-4 of itself (relative); a subnormal (below 2^-6 in
// scaled units) within half its spacing 2^-9.
constexpr double e4m3_relative_rounding = 1.0 / 16;
constexpr double e4m3_subnormal_rounding = 1.0 / 1024;
// As the CPU tests (tests/models/networks/fp8_test.cpp): float8's error on a layer and on 8-step latents.
constexpr double fp8_tolerance = 0.1;

class Fp8OnCuda : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

// Every element within e4m3's rounding of x / scale, the scale max|x| / 448: vectorized bodies and scalar tails
// (counts that are not a multiple of the 16-byte vector), one block and many, and an input that is not 16-byte
// aligned (ATen's ops instead of our kernels).
TEST_P(Fp8OnCuda, QuantizationRoundsEveryElementAsE4m3Does) {
  torch::NoGradGuard no_grad;
  const auto options = at::TensorOptions(torch::kCUDA).dtype(GetParam());
  for (std::int64_t count : {7, 4096 + 3, 1 << 20}) {
    for (bool aligned : {true, false}) {
      auto storage = (torch::randn({count + 1}, options.dtype(at::kFloat)) * 3).to(options);
      const auto x = aligned ? storage.narrow(0, 0, count) : storage.narrow(0, 1, count);
      const auto quantized = quantize_fp8(x.view({1, count}));
      const auto reference = x.to(torch::kCPU, torch::kDouble);
      const double scale = reference.abs().max().item<double>() / 448;
      EXPECT_NEAR(quantized.scale.item<float>(), scale, scale * 1e-6) << count << (aligned ? "" : " unaligned");
      const auto restored = quantized.data.to(torch::kCPU, torch::kDouble).view({count}) * scale;
      const auto bound = at::maximum(reference.abs() * e4m3_relative_rounding,
                                     torch::full_like(reference, scale * e4m3_subnormal_rounding));
      EXPECT_TRUE(((restored - reference).abs() <= bound * (1 + 1e-6)).all().item<bool>())
          << count << (aligned ? "" : " unaligned");
    }
  }
}

// A float8 layer (cuBLASLt's FP8 GEMM, fast accumulation) within float8's error of the float32 layer, in the
// input's dtype, through each helper the networks use.
TEST_P(Fp8OnCuda, ScaledGemmStaysWithinFloat8RoundingOfTheFloat32Layer) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(1);
  auto layer = linear(256, 128);
  const auto x = torch::randn({2, 77, 256});
  const auto expected = layer(x);
  layer->to(torch::kCUDA, GetParam());
  layer->quantize_to_fp8();
  const auto input = x.to(torch::kCUDA, GetParam());
  const auto y = layer(input);
  EXPECT_EQ(y.scalar_type(), GetParam());
  EXPECT_LT(test::relative_error(y.cpu().to(torch::kFloat), expected), fp8_tolerance);
  EXPECT_LT(test::relative_error(linear_part(layer, input, 64, 64).cpu().to(torch::kFloat), expected.narrow(2, 64, 64)),
            fp8_tolerance);
  EXPECT_LT(test::relative_error(linear_gelu_tanh(layer, input).cpu().to(torch::kFloat), torch::gelu(expected, "tanh")),
            fp8_tolerance);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Fp8OnCuda, ::testing::Values(at::kHalf, at::kBFloat16));

class Fp8Models : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

// The fixture models in fp8 on CUDA (fp16 elsewhere): CUDA-graph replays equal eager calls for every input and
// conditioning (the quantization kernels are captured, none of an earlier capture's quantized inputs is reused),
// and 8 steps land within float8's error of diffusers' float32 latents.
TEST_P(Fp8Models, GraphsReplayEagerCallsAndLatentsStayNearDiffusers) {
  torch::NoGradGuard no_grad;
  const c10::Device cuda(c10::kCUDA, 0);
  load_options options;
  options.device = cuda;
  options.dtype = at::kHalf;
  options.fp8 = true;
  auto pipeline = load_pipeline(test::fixtures_dir() / GetParam(), options);
  generation_request request;
  request.prompt = "a red fox";
  request.height = request.width = 64;
  const auto both = pipeline->encode_prompt(request, pipeline->plan(request));
  runtime::graphed_denoiser graphed(*pipeline);
  torch::manual_seed(0);
  const auto shape = pipeline->latent_shape(64, 64);
  for (const auto& cond : {both.negative, both.positive, branch_conditioning::stack(both.negative, both.positive)}) {
    for (double t : {900.0, 20.0}) {
      auto latents = torch::randn({cond.context.size(0), shape[1], shape[2], shape[3]}, cuda).to(at::kHalf);
      auto timestep = torch::tensor(t, torch::TensorOptions().device(cuda));
      const auto eager = pipeline->predict(latents, timestep, cond).cpu().to(torch::kFloat);
      const auto replayed = graphed.predict(latents, timestep, cond).cpu().to(torch::kFloat);
      EXPECT_LT(test::relative_error(replayed, eager), 1e-3) << "t " << t;  // fp16 outputs of the same kernels
    }
  }

  const std::string golden_file = GetParam() + "-golden.safetensors";
  auto golden = test::golden_request(GetParam());
  if (GetParam() == "tiny-sdxl") golden.sampler = "euler";
  const auto expected = test::golden(golden_file, GetParam() == "tiny-sdxl" ? "pipe_euler_latents" : "pipe_latents");
  const auto latents = generate_latents(*pipeline, golden).cpu().to(torch::kFloat);
  EXPECT_LT(test::relative_error(latents, expected), fp8_tolerance);
}

INSTANTIATE_TEST_SUITE_P(Models, Fp8Models, ::testing::Values("tiny-sdxl", "tiny-sd3"));

}  // namespace
}  // namespace hybridiff::models
