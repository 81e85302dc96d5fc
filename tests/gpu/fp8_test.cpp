// The float8 path on CUDA: our quantization kernels against e4m3's rounding bound, cuBLASLt's scaled GEMM against
// the float32 layer, and the fixture models in fp8 (eager, CUDA graphs, and against the diffusers goldens).
// Labelled `gpu`; skipped without a CUDA device.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

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

// The fused paths of our kernels against the unfused ones: a feed-forward's activation applied inside the
// quantization (computed in float32, not rounded to 16 bits first: some elements land one e4m3 step apart), one
// stream's rows of a joint [B, N + S, D] tensor quantized in place (B runs, no contiguous copy: the same bytes),
// and linear_into's GEMM per image block against one GEMM over every row.
TEST_P(Fp8OnCuda, FusedPathsEqualTheUnfusedOps) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(2);
  const auto options = at::TensorOptions(torch::kCUDA).dtype(GetParam());
  auto in = linear(256, 512), out = linear(512, 256), proj = linear(256, 1024);
  for (auto* layer : {&in, &out, &proj}) (*layer)->to(torch::kCUDA, GetParam());
  const auto x = torch::randn({2, 77, 256}, options);
  const auto hidden = in(x);
  const auto halves = proj(x).chunk(2, -1);
  const auto gelu_reference = out(at::gelu(hidden, "tanh")).to(torch::kFloat);
  const auto geglu_reference = out(halves[0] * at::gelu(halves[1])).to(torch::kFloat);
  out->quantize_to_fp8();
  const auto gelu_unfused = out(at::gelu(hidden, "tanh")).to(torch::kFloat);
  const auto geglu_unfused = out(halves[0].contiguous() * at::gelu(halves[1].contiguous())).to(torch::kFloat);
  // The unfused path rounds the activation to the dtype first (up to 2^-11 relative in fp16, 2^-8 in bf16): that
  // moves a share of about 2^-8 / 2^-3 (fp16; 2^-5 in bf16) of the elements to the neighbouring e4m3 value, one
  // step (2^-3) each: sqrt(share) · 2^-3 ≈ 0.008 (fp16) and 0.022 (bf16; measured 0.018-0.020 on an H100) in
  // relative L2. About twice that is allowed.
  const double unfused_tolerance = GetParam() == at::kBFloat16 ? 4e-2 : 2e-2;
  EXPECT_LT(test::relative_error(feed_forward_gelu_tanh(in, out, x).to(torch::kFloat), gelu_unfused),
            unfused_tolerance);
  EXPECT_LT(test::relative_error(geglu_feed_forward(proj, out, x).to(torch::kFloat), geglu_unfused), unfused_tolerance);
  EXPECT_LT(test::relative_error(feed_forward_gelu_tanh(in, out, x).to(torch::kFloat), gelu_reference), fp8_tolerance);
  EXPECT_LT(test::relative_error(geglu_feed_forward(proj, out, x).to(torch::kFloat), geglu_reference), fp8_tolerance);

  const auto joint = torch::randn({2, 77 + 32, 256}, options);
  for (const auto& rows : {joint.narrow(1, 0, 77), joint.narrow(1, 77, 32)}) {
    ASSERT_FALSE(rows.is_contiguous());
    const auto in_place = quantize_fp8(rows);
    const auto copied = quantize_fp8(rows.contiguous());
    EXPECT_TRUE(torch::equal(in_place.data.view(at::kByte), copied.data.view(at::kByte)));
    EXPECT_TRUE(torch::equal(in_place.scale, copied.scale));
  }
  in->quantize_to_fp8();
  auto into = torch::full({2, 77 + 5, 512}, -1.0, options);
  linear_into(into.narrow(1, 5, 77), x, in);
  EXPECT_LT(test::relative_error(into.narrow(1, 5, 77).to(torch::kFloat), in(x).to(torch::kFloat)), 1e-3);
  EXPECT_TRUE((into.narrow(1, 0, 5) == -1).all().item<bool>());
}

// A CUDA graph that quantizes its input (twice: the second call reuses the first quantization within the capture)
// requantizes what its replays find in the input buffer: no quantization of the warm-up runs or of eager calls
// before is baked in. One layer, so eager and replayed outputs are the same kernels' on the same values.
TEST_P(Fp8OnCuda, GraphReplaysQuantizeTheInputTheyFind) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  const auto options = at::TensorOptions(torch::kCUDA).dtype(GetParam());
  auto layer = linear(256, 128);
  layer->to(torch::kCUDA, GetParam());
  layer->quantize_to_fp8();
  auto input = torch::randn({2, 77, 256}, options);
  const auto eager_first = layer(input);  // remembered by the quantization before the capture
  auto side = c10::cuda::getStreamFromPool(false, 0);
  at::cuda::CUDAGraph graph;
  at::Tensor first, second;
  side.synchronize();
  c10::cuda::getCurrentCUDAStream(0).synchronize();
  {
    c10::cuda::CUDAStreamGuard on_side(side);
    for (int warm_up = 0; warm_up < 2; ++warm_up) first = layer(input);
    side.synchronize();
    graph.capture_begin();
    first = layer(input);
    second = layer(input);
    graph.capture_end();
  }
  for (double factor : {3.0, -0.5}) {
    const auto values = torch::randn({2, 77, 256}, options) * factor;
    input.copy_(values);
    c10::cuda::getCurrentCUDAStream(0).synchronize();
    graph.replay();
    c10::cuda::getCurrentCUDAStream(0).synchronize();
    const auto eager = layer(values).to(torch::kFloat);
    EXPECT_LT(test::relative_error(first.to(torch::kFloat), eager), 1e-3) << factor;
    EXPECT_LT(test::relative_error(second.to(torch::kFloat), eager), 1e-3) << factor;
    EXPECT_GT(test::relative_error(eager_first.to(torch::kFloat), eager), 0.5) << factor;
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Fp8OnCuda, ::testing::Values(at::kHalf, at::kBFloat16));

class Fp8Models : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

// The fixture models in fp8 on CUDA (fp16 elsewhere): CUDA-graph replays stay within float8's error of eager calls
// for every input and conditioning, and 8 steps land within float8's error of diffusers' float32 latents. Not
// closer: tiny-sdxl's replays measured 0.03 from its eager calls on an H100, about float8's own error, while tiny-sd3's
// matched. A last-bit difference between a replay and an eager call (another GEMM or convolution algorithm) moves
// some values across an e4m3 rounding step, and every layer after re-rounds them; the test prints the fp16 models'
// replay-vs-eager distance beside it. GraphReplaysQuantizeTheInputTheyFind checks the captured quantization itself,
// on one layer, where nothing compounds.
TEST_P(Fp8Models, GraphsReplayEagerCallsAndLatentsStayNearDiffusers) {
  torch::NoGradGuard no_grad;
  const c10::Device cuda(c10::kCUDA, 0);
  load_options options;
  options.device = cuda;
  options.dtype = at::kHalf;
  options.fp8 = true;
  auto pipeline = load_pipeline(test::fixtures_dir() / GetParam(), options);
  options.fp8 = false;
  auto unquantized = load_pipeline(test::fixtures_dir() / GetParam(), options);  // fp16: the same comparison, printed
  generation_request request;
  request.prompt = "a red fox";
  request.height = request.width = 64;
  const auto both = pipeline->encode_prompt(request, pipeline->plan(request));
  runtime::graphed_denoiser graphed(*pipeline), graphed_fp16(*unquantized);
  torch::manual_seed(0);
  const auto shape = pipeline->latent_shape(64, 64);
  for (const auto& cond : {both.negative, both.positive, branch_conditioning::stack(both.negative, both.positive)}) {
    for (double t : {900.0, 20.0}) {
      auto latents = torch::randn({cond.context.size(0), shape[1], shape[2], shape[3]}, cuda).to(at::kHalf);
      auto timestep = torch::tensor(t, torch::TensorOptions().device(cuda));
      const auto eager = pipeline->predict(latents, timestep, cond).cpu().to(torch::kFloat);
      const auto replayed = graphed.predict(latents, timestep, cond).cpu().to(torch::kFloat);
      const auto distance = test::relative_error(replayed, eager);
      EXPECT_LT(distance, fp8_tolerance) << "t " << t;
      const auto fp16_distance =
          test::relative_error(graphed_fp16.predict(latents, timestep, cond).cpu().to(torch::kFloat),
                               unquantized->predict(latents, timestep, cond).cpu().to(torch::kFloat));
      std::cout << GetParam() << " batch " << cond.context.size(0) << " t " << t << ": replay vs eager " << distance
                << " (fp16: " << fp16_distance << ")\n";
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
