// The float8 path (--dtype fp8): linear layers with e4m3 weights and per-tensor scales, their inputs quantized at
// run time, on the CPU (ATen's scaled GEMM; the CUDA kernels are checked in tests/gpu), against exact values and
// against the diffusers goldens of the fixtures.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/errors.hpp"
#include "models/nn/nn.hpp"
#include "models/pipelines/pipeline.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

// Float8 e4m3 keeps 3 mantissa bits: each quantized weight and input is within 2^-4 of its value (relative, half
// a unit in the last place), so a layer's output moves by a few percent of its scale. Checked at 0.1
// (max|a−b| / max|b|); measured on this CPU: 0.037 for a random layer, 0.0068 and 0.0047 for the 8-step latents of
// tiny-sdxl and tiny-sd3 against diffusers' float32 ones.
constexpr double fp8_tolerance = 0.1;

// Values whose float8 e4m3 quantization is exact: values of the e4m3 grid, the largest magnitude 448 (e4m3's
// largest) — the per-tensor scale is then exactly 1 (max|x| / 448) and nothing rounds.
at::Tensor exactly_representable(at::IntArrayRef shape, std::int64_t seed) {
  torch::manual_seed(seed);
  auto values = (torch::randn(shape) * 64).clamp(-448, 448).to(at::kFloat8_e4m3fn).to(torch::kFloat);
  values.view({-1})[0] = 448;
  return values;
}

// With inputs and weights that float8 holds exactly, the scaled GEMM (float32 accumulation) gives x·Wᵀ + b as the
// float32 linear does, up to float32 rounding: the path applies both scales and the bias, and keeps the shapes.
TEST(Fp8Linear, EqualsTheFloat32LayerWhereFloat8IsExact) {
  torch::NoGradGuard no_grad;
  auto layer = linear(32, 48);
  layer->weight.copy_(exactly_representable({48, 32}, 1));
  layer->bias.copy_(torch::randn({48}));
  const auto x = exactly_representable({2, 5, 32}, 2);
  const auto expected = at::linear(x, layer->weight, layer->bias);
  layer->quantize_to_fp8();
  ASSERT_TRUE(layer->fp8());
  EXPECT_EQ(layer->weight.scalar_type(), at::kFloat8_e4m3fn);
  EXPECT_EQ(layer->named_buffers().contains("weight_scale"), true);
  const auto y = layer(x);
  EXPECT_EQ(y.sizes(), expected.sizes());
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  EXPECT_LT(test::relative_error(y, expected), 1e-6);
  // The same values through the helpers the networks use.
  EXPECT_LT(test::relative_error(linear_rows(x, layer), expected), 1e-6);
  EXPECT_LT(test::relative_error(linear_part(layer, x, 16, 16), expected.narrow(2, 16, 16)), 1e-6);
  auto buffer = torch::full({2, 9, 48}, -1.0);
  linear_into(buffer.narrow(1, 2, 5), x, layer);
  EXPECT_LT(test::relative_error(buffer.narrow(1, 2, 5), expected), 1e-6);
  EXPECT_TRUE(torch::equal(buffer.narrow(1, 0, 2), torch::full({2, 2, 48}, -1.0)));
}

// On random values the layer is within float8's rounding of the float32 one.
TEST(Fp8Linear, RandomValuesStayWithinFloat8Rounding) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(4);
  auto layer = linear(64, 32);
  const auto x = torch::randn({3, 7, 64});
  const auto expected = layer(x);
  layer->quantize_to_fp8();
  const auto distance = test::relative_error(layer(x), expected);
  EXPECT_GT(distance, 0.0);  // quantized for real
  EXPECT_LT(distance, fp8_tolerance);
}

// The feed-forwards the networks use apply their activation before the float8 GEMM of their second layer (SD3's
// tanh GELU; SDXL's GEGLU, value · gelu(gate) from proj's first and second halves), and stay within float8's
// rounding of the float32 composition. Without the activation they would be far from it.
TEST(Fp8Linear, FeedForwardsApplyTheirActivationBeforeTheFloat8Gemm) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(6);
  const auto x = torch::randn({2, 9, 32});
  auto in = linear(32, 64), out = linear(64, 32), proj = linear(32, 128);
  const auto hidden = in(x);
  const auto gelu_expected = out(torch::gelu(hidden, "tanh"));
  const auto halves = proj(x).chunk(2, -1);
  const auto geglu_expected = out(halves[0] * torch::gelu(halves[1]));
  EXPECT_LT(test::relative_error(feed_forward_gelu_tanh(in, out, x), gelu_expected), 1e-6);
  EXPECT_LT(test::relative_error(geglu_feed_forward(proj, out, x), geglu_expected), 1e-6);
  EXPECT_GT(test::relative_error(out(hidden), gelu_expected), 3 * fp8_tolerance);
  EXPECT_GT(test::relative_error(out(halves[0]), geglu_expected), 3 * fp8_tolerance);

  for (auto* layer : {&in, &out, &proj}) (*layer)->quantize_to_fp8();
  const auto gelu_distance = test::relative_error(feed_forward_gelu_tanh(in, out, x), gelu_expected);
  const auto geglu_distance = test::relative_error(geglu_feed_forward(proj, out, x), geglu_expected);
  EXPECT_GT(gelu_distance, 0.0);
  EXPECT_LT(gelu_distance, fp8_tolerance);
  EXPECT_GT(geglu_distance, 0.0);
  EXPECT_LT(geglu_distance, fp8_tolerance);
}

// An input is quantized once while it is unchanged (q, k and v share it), and again after an in-place write.
TEST(Fp8Linear, AnInputIsQuantizedOnceUntilItChanges) {
  torch::NoGradGuard no_grad;
  auto x = exactly_representable({4, 32}, 5);
  const auto first = quantize_fp8(x);
  const auto again = quantize_fp8(x);
  EXPECT_EQ(first.data.data_ptr(), again.data.data_ptr());
  EXPECT_FLOAT_EQ(first.scale.item<float>(), 1.0f);
  EXPECT_TRUE(torch::equal(first.data.to(torch::kFloat), x));
  x.mul_(2);
  const auto changed = quantize_fp8(x);
  EXPECT_NE(changed.data.data_ptr(), first.data.data_ptr());
  EXPECT_FLOAT_EQ(changed.scale.item<float>(), 2.0f);
  EXPECT_TRUE(torch::equal(changed.data.to(torch::kFloat) * 2, x));
  // Another tensor of the same values is quantized on its own.
  const auto copy = x.clone();
  EXPECT_NE(quantize_fp8(copy).data.data_ptr(), changed.data.data_ptr());
}

// The scaled GEMM needs both sides to be multiples of 16: such a layer is refused by name, and skipped by the
// model-wide quantization (it stays in its dtype).
TEST(Fp8Linear, SidesThatAreNotMultiplesOf16StayUnquantized) {
  auto odd = linear(20, 16);
  EXPECT_THROW(odd->quantize_to_fp8(), error);
  EXPECT_FALSE(odd->fp8());
  auto model = std::make_shared<torch::nn::Module>();
  auto narrow = model->register_module("narrow", linear(20, 16));
  auto wide = model->register_module("wide", linear(16, 32));
  auto skipped = model->register_module("skipped", linear(16, 32));
  EXPECT_EQ(quantize_linears_to_fp8(*model, [](const std::string& name) { return name != "skipped"; }), 1);
  EXPECT_EQ(narrow->weight.scalar_type(), at::kFloat);
  EXPECT_EQ(wide->weight.scalar_type(), at::kFloat8_e4m3fn);
  EXPECT_EQ(skipped->weight.scalar_type(), at::kFloat);
}

// The float8 parameter names of a pipeline's denoiser.
std::vector<std::string> float8_weights(diffusion_pipeline& pipeline) {
  std::vector<std::string> names;
  for (const auto& item : pipeline.denoiser().named_parameters())
    if (item.value().scalar_type() == at::kFloat8_e4m3fn) names.push_back(item.key());
  return names;
}

// A fixture folder loaded as a user's folder with fp8.
std::unique_ptr<diffusion_pipeline> load_in_fp8(const std::string& fixture) {
  load_options options;
  options.fp8 = true;
  return load_pipeline(test::fixtures_dir() / fixture, options);
}

// Whether `name` is a parameter of a layer named with one of `layers` (".ff.net.2" for "....ff.net.2.weight").
bool of_layer(const std::string& name, const std::vector<std::string>& layers) {
  const auto layer = name.substr(0, name.rfind('.'));
  return std::any_of(layers.begin(), layers.end(), [&](const std::string& tail) {
    return layer.size() >= tail.size() && layer.compare(layer.size() - tail.size(), tail.size(), tail) == 0;
  });
}

// tiny-sdxl loaded as a user's folder with fp8: the feed-forwards of the attention blocks are float8, everything
// else float32; 8 Euler steps land within float8's error of diffusers' float32 latents, yet not on them.
TEST(Fp8Pipeline, SdxlQuantizesTheFeedForwardsAndStaysNearDiffusers) {
  auto pipeline = load_in_fp8("tiny-sdxl");
  const auto quantized = float8_weights(*pipeline);
  ASSERT_FALSE(quantized.empty());
  for (const auto& name : quantized) {
    EXPECT_NE(name.find("attentions."), std::string::npos) << name;
    EXPECT_TRUE(of_layer(name, {".ff.net.0.proj", ".ff.net.2"})) << name;
  }
  auto& unet = pipeline->denoiser();
  const std::string block = "down_blocks.1.attentions.0.transformer_blocks.0.";
  EXPECT_EQ(unet.named_parameters()[block + "ff.net.0.proj.weight"].scalar_type(), at::kFloat8_e4m3fn);
  EXPECT_EQ(unet.named_parameters()[block + "ff.net.2.weight"].scalar_type(), at::kFloat8_e4m3fn);
  EXPECT_EQ(unet.named_parameters()[block + "attn1.to_q.weight"].scalar_type(), at::kFloat);
  EXPECT_EQ(unet.named_parameters()["down_blocks.1.attentions.0.proj_in.weight"].scalar_type(), at::kFloat);
  EXPECT_EQ(unet.named_parameters()["conv_in.weight"].scalar_type(), at::kFloat);
  EXPECT_EQ(unet.named_parameters()["time_embedding.linear_1.weight"].scalar_type(), at::kFloat);
  EXPECT_TRUE(pipeline->placement().fp8);

  auto request = test::golden_request("tiny-sdxl");
  request.sampler = "euler";
  const auto distance = test::relative_error(generate_latents(*pipeline, request),
                                             test::golden("tiny-sdxl-golden.safetensors", "pipe_euler_latents"));
  EXPECT_GT(distance, 1e-4);
  EXPECT_LT(distance, fp8_tolerance);
  // Per-request LoRAs would change float8 weights: refused, the model intact.
  EXPECT_THROW(pipeline->use_loras({{test::fixtures_dir() / "none.safetensors", 1.0}}), error);
}

// tiny-sd3: the blocks' image-stream q, k, v and feed-forwards are float8; their out-projections, context stream,
// adaLN modulation and the embedders float32; the 8-step latents stay within float8's error of diffusers'.
TEST(Fp8Pipeline, Sd3QuantizesTheImageStreamsQkvAndFeedForwardsAndStaysNearDiffusers) {
  auto pipeline = load_in_fp8("tiny-sd3");
  const auto quantized = float8_weights(*pipeline);
  ASSERT_FALSE(quantized.empty());
  for (const auto& name : quantized) {
    EXPECT_EQ(name.rfind("transformer_blocks.", 0), 0u) << name;
    EXPECT_TRUE(of_layer(name, {".attn.to_q", ".attn.to_k", ".attn.to_v", ".ff.net.0.proj", ".ff.net.2"})) << name;
  }
  auto& transformer = pipeline->denoiser();
  for (const char* name : {"attn.to_q", "attn.to_k", "attn.to_v", "ff.net.0.proj", "ff.net.2"})
    EXPECT_EQ(transformer.named_parameters()[std::string("transformer_blocks.0.") + name + ".weight"].scalar_type(),
              at::kFloat8_e4m3fn)
        << name;
  for (const char* name : {"attn.to_out.0", "attn.add_q_proj", "ff_context.net.0.proj", "norm1.linear"})
    EXPECT_EQ(transformer.named_parameters()[std::string("transformer_blocks.0.") + name + ".weight"].scalar_type(),
              at::kFloat)
        << name;
  EXPECT_EQ(transformer.named_parameters()["context_embedder.weight"].scalar_type(), at::kFloat);

  const auto distance = test::relative_error(generate_latents(*pipeline, test::golden_request("tiny-sd3")),
                                             test::golden("tiny-sd3-golden.safetensors", "pipe_latents"));
  EXPECT_GT(distance, 1e-4);
  EXPECT_LT(distance, fp8_tolerance);
}

}  // namespace
}  // namespace hybridiff::models
