// The SDXL components against diffusers/transformers goldens (fixtures/tiny-sdxl-golden.safetensors), float32 CPU.
#include <functional>
#include <map>

#include <gtest/gtest.h>
#include <ATen/record_function.h>
#include <torch/torch.h>

#include "models/networks/clip_text_model.hpp"
#include "models/text/clip_tokenizer.hpp"
#include "models/io/config.hpp"
#include "models/errors.hpp"
#include "models/networks/unet.hpp"
#include "models/networks/vae.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

constexpr double component_tolerance = 1e-4;  // relative (max|a−b| / max|b|), the fixtures' contract
const char* golden_file = "tiny-sdxl-golden.safetensors";

std::filesystem::path sdxl() { return test::fixtures_dir() / "tiny-sdxl"; }

std::vector<std::string> prompts() {
  auto list = read_json_file(test::fixtures_dir() / "prompts.json");
  return list.get<std::vector<std::string>>();
}

std::vector<std::int64_t> as_ids(const at::Tensor& tensor) {
  auto values = tensor.to(torch::kLong).contiguous();
  return std::vector<std::int64_t>(values.data_ptr<std::int64_t>(), values.data_ptr<std::int64_t>() + values.numel());
}

// The ATen ops that `work` dispatches on this thread, by name (a RecordFunction observer, as the profiler uses).
std::map<std::string, int> aten_ops_of(const std::function<void()>& work) {
  static thread_local std::map<std::string, int>* calls = nullptr;
  std::map<std::string, int> seen;
  calls = &seen;
  const auto handle = at::addThreadLocalCallback(at::RecordFunctionCallback(
      [](const at::RecordFunction& op) -> std::unique_ptr<at::ObserverContext> {
        if (calls) ++(*calls)[op.name()];
        return nullptr;
      }));
  work();
  at::removeCallback(handle);
  calls = nullptr;
  return seen;
}

// A batched linear layer ([B, L, in], as every attention and feed-forward layer gets) is one addmm with the bias
// in it, as PyTorch's nn.Linear computes it — not LibTorch's C++ F::linear (matmul, then a broadcasting add), which
// costs a kernel and a pass over the output per layer on the GPU. Values: x·Wᵀ + b, float32, 1e-5.
TEST(Linear, BatchedInputIsOneAddmmWithTheBias) {
  torch::manual_seed(0);
  Linear layer(8, 6);
  const auto x = torch::randn({2, 5, 8});
  at::Tensor y;
  const auto calls = aten_ops_of([&] { y = layer(x); });
  EXPECT_EQ(calls.count("aten::addmm") ? calls.at("aten::addmm") : 0, 1);
  EXPECT_EQ(calls.count("aten::add_") + calls.count("aten::add"), 0u);
  EXPECT_TRUE(torch::allclose(y, torch::matmul(x, layer->weight.t()) + layer->bias, 1e-5, 1e-5));
  EXPECT_EQ(y.sizes(), (std::vector<std::int64_t>{2, 5, 6}));
}

TEST(ClipTokenizer, IdsEqualTransformersForEveryPrompt) {
  auto first = clip_tokenizer::load(sdxl() / "tokenizer");
  auto second = clip_tokenizer::load(sdxl() / "tokenizer_2");  // pads with "!" instead of <|endoftext|>
  auto texts = prompts();
  ASSERT_EQ(texts.size(), 5u);
  for (std::size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(first.encode(texts[i]), as_ids(test::golden(golden_file, "tok_ids_" + std::to_string(i)))) << texts[i];
    EXPECT_EQ(second.encode(texts[i]), as_ids(test::golden(golden_file, "tok2_ids_" + std::to_string(i)))) << texts[i];
  }
}

TEST(ClipTokenizer, LongPromptIsTruncatedTo77) {
  auto tokenizer = clip_tokenizer::load(sdxl() / "tokenizer");
  std::string text;
  for (int i = 0; i < 100; ++i) text += "cat ";
  bool truncated = false;
  auto ids = tokenizer.encode(text, &truncated);
  EXPECT_TRUE(truncated);
  ASSERT_EQ(ids.size(), 77u);
  EXPECT_EQ(ids.front(), tokenizer.bos_id());
  EXPECT_EQ(ids.back(), tokenizer.eos_id());
  tokenizer.encode("short", &truncated);
  EXPECT_FALSE(truncated);
}

TEST(ClipTokenizer, BadFilesAndInputFailClearly) {
  test::temp_dir dir;
  EXPECT_THROW(clip_tokenizer::load(dir.path()), error);
  auto tokenizer = clip_tokenizer::load(sdxl() / "tokenizer");
  EXPECT_THROW(tokenizer.encode(std::string("bad \xff byte")), error);
}

TEST(ClipTextModel, EncoderOneMatchesTransformers) {
  torch::NoGradGuard no_grad;
  auto model = load_clip_text_model(sdxl() / "text_encoder", false);
  auto ids = test::golden(golden_file, "tok_ids_0").unsqueeze(0);
  auto out = model->forward(ids);
  EXPECT_LT(test::relative_error(out.hidden_states[out.hidden_states.size() - 2][0],
                                 test::golden(golden_file, "te_hidden_penultimate")), component_tolerance);
  EXPECT_LT(test::relative_error(out.last_hidden_state[0], test::golden(golden_file, "te_last")), component_tolerance);
  EXPECT_LT(test::relative_error(out.pooled[0], test::golden(golden_file, "te_pooled")), component_tolerance);
}

TEST(ClipTextModel, EncoderTwoWithProjectionMatchesTransformers) {
  torch::NoGradGuard no_grad;
  auto model = load_clip_text_model(sdxl() / "text_encoder_2", true);
  auto out = model->forward(test::golden(golden_file, "tok2_ids_0").unsqueeze(0));
  EXPECT_LT(test::relative_error(out.hidden_states[out.hidden_states.size() - 2][0],
                                 test::golden(golden_file, "te2_hidden_penultimate")), component_tolerance);
  EXPECT_LT(test::relative_error(out.pooled[0], test::golden(golden_file, "te2_text_embeds")), component_tolerance);
}

TEST(Unet, OutputAndIntermediatesMatchDiffusers) {
  torch::NoGradGuard no_grad;
  auto unet = load_unet(sdxl() / "unet");
  std::map<std::string, at::Tensor> recorded;
  auto out = unet->forward(test::golden(golden_file, "unet_in_x"), test::golden(golden_file, "unet_in_t"),
                           {test::golden(golden_file, "unet_in_ctx"), test::golden(golden_file, "unet_in_text_embeds"),
                            test::golden(golden_file, "unet_in_time_ids")},
                           [&](const std::string& name, const at::Tensor& value) { recorded[name] = value; });
  for (const char* name : {"conv_in", "down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0",
                           "up_blocks.1", "up_blocks.2"}) {
    auto key = std::string("unet_mid_") + name + (std::string(name).rfind("down", 0) == 0 ? ".0" : "");
    ASSERT_TRUE(recorded.count(name)) << name;
    EXPECT_LT(test::relative_error(recorded[name], test::golden(golden_file, key)), component_tolerance) << name;
  }
  EXPECT_LT(test::relative_error(out, test::golden(golden_file, "unet_out")), component_tolerance);
}

TEST(Unet, UnsupportedBlockTypeIsRejectedByName) {
  test::temp_dir dir;
  auto values = read_json_file(sdxl() / "unet/config.json");
  values["down_block_types"][0] = "KDownBlock2D";
  test::write_file(dir / "config.json", values.dump());
  try {
    unet_config::from(read_config(dir / "config.json"));
    FAIL();
  } catch (const error& failure) {
    std::string message = failure.what();
    EXPECT_NE(message.find("down_block_types"), std::string::npos) << message;
    EXPECT_NE(message.find("KDownBlock2D"), std::string::npos) << message;
  }
}

TEST(Vae, DecodeMatchesDiffusers) {
  torch::NoGradGuard no_grad;
  auto vae = load_vae(sdxl() / "vae");
  EXPECT_EQ(vae->config().spatial_factor(), 2);
  auto image = vae->decode(test::golden(golden_file, "vae_in_latents"));
  EXPECT_LT(test::relative_error(image, test::golden(golden_file, "vae_out_image")), component_tolerance);
  // The encoder runs and gives latents of the right shape (no golden: diffusers' pipeline never encodes).
  auto latents = vae->encode_mean(image);
  EXPECT_EQ(latents.sizes(), (c10::IntArrayRef{1, 4, 16, 16}));
}

TEST(ChannelsLast, IsForCudaWeightsOnly) {
  // load_* turn it on for CUDA; asked for on the CPU it is an error that names the model, and nothing changes.
  auto unet = load_unet(sdxl() / "unet");
  auto vae = load_vae(sdxl() / "vae");
  EXPECT_FALSE(unet->channels_last());
  EXPECT_FALSE(vae->channels_last());
  try {
    unet->use_channels_last();
    FAIL() << "no error";
  } catch (const error& failure) {
    EXPECT_NE(std::string(failure.what()).find("UNet: channels-last is for CUDA weights"), std::string::npos)
        << failure.what();
  }
  EXPECT_THROW(vae->use_channels_last(), error);
  EXPECT_FALSE(unet->channels_last());
  EXPECT_TRUE(unet->conv_in->weight.is_contiguous());
}

}  // namespace
}  // namespace hybridiff::models
