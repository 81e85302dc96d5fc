// SD3 against diffusers/transformers goldens (fixtures/tiny-sd3*, tiny-t5*), float32 CPU.
#include <sentencepiece_trainer.h>

#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/errors.hpp"
#include "models/io/safetensors.hpp"
#include "models/io/single_file.hpp"
#include "models/networks/sd3_transformer.hpp"
#include "models/networks/t5_encoder.hpp"
#include "models/networks/vae.hpp"
#include "models/nn/nn.hpp"
#include "models/pipelines/pipeline.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

constexpr double component_tolerance = 1e-4;  // relative (max|a−b| / max|b|)
constexpr double latents_tolerance = 1e-3;    // relative, final latents and image after 8 steps
const char* golden_file = "tiny-sd3-golden.safetensors";

std::filesystem::path sd3() { return test::fixtures_dir() / "tiny-sd3"; }

generation_request golden_request() { return test::golden_request("tiny-sd3"); }

TEST(Sd3Transformer, OutputAndIntermediatesMatchDiffusers) {
  torch::NoGradGuard no_grad;
  auto transformer = load_sd3_transformer(sd3() / "transformer");
  std::map<std::string, at::Tensor> recorded;
  auto out = transformer->forward(test::golden(golden_file, "tr_in_x"), test::golden(golden_file, "tr_in_t"),
                                  test::golden(golden_file, "tr_in_ctx"), test::golden(golden_file, "tr_in_pooled"),
                                  [&](const std::string& name, const at::Tensor& value) { recorded[name] = value; });
  for (const char* name : {"pos_embed", "context_embedder", "time_text_embed", "transformer_blocks.0.0",
                           "transformer_blocks.0.1", "transformer_blocks.1.1", "norm_out"}) {
    ASSERT_TRUE(recorded.count(name)) << name;
    EXPECT_LT(test::relative_error(recorded[name], test::golden(golden_file, std::string("tr_mid_") + name)),
              component_tolerance) << name;
  }
  EXPECT_FALSE(recorded.count("transformer_blocks.1.0"));  // the last block is context_pre_only
  EXPECT_LT(test::relative_error(out, test::golden(golden_file, "tr_out")), component_tolerance);
}

TEST(Sd3Transformer, BlockGroupsComposeToTheWholeModel) {
  torch::NoGradGuard no_grad;
  auto transformer = load_sd3_transformer(sd3() / "transformer");
  auto x = test::golden(golden_file, "tr_in_x"), t = test::golden(golden_file, "tr_in_t");
  auto ctx = test::golden(golden_file, "tr_in_ctx"), pooled = test::golden(golden_file, "tr_in_pooled");
  auto state = transformer->embed(x, t, ctx, pooled);
  transformer->run_blocks(state, 0, 1);
  transformer->run_blocks(state, 1, 2);
  EXPECT_TRUE(torch::equal(transformer->finish(state), transformer->forward(x, t, ctx, pooled)));
  EXPECT_THROW(transformer->run_blocks(state, 1, 3), c10::Error);
}

// linear_into writes each image's rows of a row block in place (the SD3 block's q, k, v into the joint buffers),
// leaves the buffer's other rows alone, and equals at::linear (ATen's one-GEMM linear) within float32 rounding.
TEST(LinearInto, WritesARowBlockInPlaceAsAtLinear) {
  torch::manual_seed(3);
  for (bool biased : {true, false}) {
    auto layer = linear(5, 3, biased);
    auto x = torch::randn({2, 7, 5}).narrow(1, 2, 4);  // a row block: rows contiguous per image only
    auto buffer = torch::full({2, 9, 3}, -1.0);
    const auto storage = buffer.data_ptr();
    {
      torch::NoGradGuard no_grad;
      linear_into(buffer.narrow(1, 3, 4), x, layer);
      EXPECT_TRUE(torch::allclose(buffer.narrow(1, 3, 4), at::linear(x, layer->weight, layer->bias), 1e-6, 1e-6));
    }
    EXPECT_EQ(buffer.data_ptr(), storage);
    EXPECT_TRUE(torch::equal(buffer.narrow(1, 0, 3), torch::full({2, 3, 3}, -1.0)));
    EXPECT_TRUE(torch::equal(buffer.narrow(1, 7, 2), torch::full({2, 2, 3}, -1.0)));
    EXPECT_THROW(linear_into(buffer.narrow(1, 0, 3), x, layer), c10::Error);  // 3 rows for 4
  }
  // Recording autograd (the parameters require grad): the same values, and gradients reach the weight.
  auto layer = linear(5, 3);
  auto x = torch::randn({2, 4, 5});
  auto y = linear_rows(x, layer);
  EXPECT_TRUE(torch::allclose(y, at::linear(x, layer->weight, layer->bias), 1e-6, 1e-6));
  y.sum().backward();
  ASSERT_TRUE(layer->weight.grad().defined());
  EXPECT_GT(layer->weight.grad().abs().sum().item<double>(), 0.0);
}

TEST(T5Encoder, MatchesTransformers) {
  torch::NoGradGuard no_grad;
  auto encoder = load_t5_encoder(test::fixtures_dir() / "tiny-t5");
  auto out = encoder->forward(test::golden("tiny-t5-golden.safetensors", "input_ids"));
  EXPECT_LT(test::relative_error(out, test::golden("tiny-t5-golden.safetensors", "last_hidden_state")), component_tolerance);
}

TEST(T5Tokenizer, EncodesWithEosTruncatesAndPads) {
  // A real SentencePiece model, trained here by libsentencepiece itself on a few sentences.
  test::temp_dir dir;
  {
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 50; ++i) corpus << "a cat holding a sign that says hello world " << i << "\nastronaut in a jungle\n";
  }
  auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + (dir / "corpus.txt").string() + " --model_prefix=" + (dir / "spiece").string() +
      " --vocab_size=40 --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1 --minloglevel=2");
  ASSERT_TRUE(status.ok()) << status.ToString();
  auto tokenizer = t5_tokenizer::load(dir.path());
  bool truncated = true;
  auto ids = tokenizer.encode("a cat", 8, &truncated);
  ASSERT_EQ(ids.size(), 8u);
  EXPECT_FALSE(truncated);
  auto end = std::find(ids.begin(), ids.end(), tokenizer.eos_id());
  ASSERT_NE(end, ids.end());
  EXPECT_GT(end - ids.begin(), 0);
  EXPECT_TRUE(std::all_of(end + 1, ids.end(), [&](std::int64_t id) { return id == tokenizer.pad_id(); }));
  auto cut = tokenizer.encode("a cat holding a sign that says hello world astronaut in a jungle", 4, &truncated);
  EXPECT_TRUE(truncated);
  ASSERT_EQ(cut.size(), 4u);
  EXPECT_EQ(cut.back(), tokenizer.eos_id());
  EXPECT_THROW(t5_tokenizer::load(dir / "absent"), error);
  std::filesystem::create_directories(dir / "bad");
  test::write_file(dir / "bad/spiece.model", "not a model");
  EXPECT_THROW(t5_tokenizer::load(dir / "bad"), error);
}

TEST(Sd3Vae, DecodeMatchesDiffusers) {
  torch::NoGradGuard no_grad;
  auto vae = load_vae(sd3() / "vae");
  EXPECT_FALSE(vae->quant_conv);  // use_quant_conv false in tiny-sd3/vae/config.json
  EXPECT_LT(test::relative_error(vae->decode(test::golden(golden_file, "vae_in_latents")),
                                 test::golden(golden_file, "vae_out_image")), component_tolerance);
}

class Sd3Pipeline : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { pipeline_ = load_pipeline(sd3(), {}).release(); }
  static void TearDownTestSuite() {
    delete pipeline_;
    pipeline_ = nullptr;
  }
  static generation_request request() { return golden_request(); }
  static diffusion_pipeline* pipeline_;
};
diffusion_pipeline* Sd3Pipeline::pipeline_ = nullptr;

TEST_F(Sd3Pipeline, EmbeddingsMatchDiffusers) {
  torch::NoGradGuard no_grad;
  auto r = request();
  auto cond = pipeline_->encode_prompt(r, pipeline_->plan(r));
  EXPECT_LT(test::relative_error(cond.positive.context, test::golden(golden_file, "pipe_prompt_embeds")), component_tolerance);
  EXPECT_LT(test::relative_error(cond.negative.context, test::golden(golden_file, "pipe_negative_prompt_embeds")),
            component_tolerance);
  EXPECT_LT(test::relative_error(cond.positive.pooled, test::golden(golden_file, "pipe_pooled_prompt_embeds")),
            component_tolerance);
  EXPECT_LT(test::relative_error(cond.negative.pooled, test::golden(golden_file, "pipe_negative_pooled_prompt_embeds")),
            component_tolerance);
}

TEST_F(Sd3Pipeline, FinalLatentsAndImageMatchDiffusers) {
  auto r = request();
  auto sampler = pipeline_->make_sampler("");
  sampler->set_timesteps(*r.steps);
  EXPECT_LT(test::relative_error(sampler->timesteps(), test::golden(golden_file, "sched_timesteps")), 1e-6);
  EXPECT_LT(test::relative_error(sampler->sigmas(), test::golden(golden_file, "sched_sigmas")), 1e-6);
  auto latents = generate_latents(*pipeline_, r);
  EXPECT_LT(test::relative_error(latents, test::golden(golden_file, "pipe_latents")), latents_tolerance);
  EXPECT_LT(test::relative_error(pipeline_->decode(latents), test::golden(golden_file, "pipe_image")), latents_tolerance);
}

TEST_F(Sd3Pipeline, ALoraOnTheTransformerMergesAsDiffusersFusesIt) {
  // tests/golden/make_lora_goldens.py: a diffusers/PEFT LoRA of the transformer's attention (both streams) and
  // feed-forward outputs, fused at scale 1 by diffusers; the final latents within 1e-3, 0.9 % from the LoRA-less run.
  const auto golden_dir = std::filesystem::path(HYBRIDIFF_SOURCE_DIR) / "tests/golden/lora";
  load_options options;
  options.loras = {{golden_dir / "tiny-sd3-lora-peft.safetensors", 1.0}};
  auto with_lora = load_pipeline(sd3(), options);
  auto latents = generate_latents(*with_lora, request());
  const auto golden = checkpoint::open(golden_dir / "tiny-sd3-lora-golden.safetensors").tensor("latents");
  EXPECT_LT(test::relative_error(latents, golden), latents_tolerance);
  EXPECT_GT(test::relative_error(latents, test::golden(golden_file, "pipe_latents")), 5e-3);
}

// SD3.5: tests/golden/make_sd35_goldens.py makes a tiny SD3.5-Medium-shaped transformer (qk_norm "rms_norm", dual
// attention in block 0, block 1 context_pre_only) and records diffusers' outputs with it.
std::filesystem::path sd35_golden_dir() { return std::filesystem::path(HYBRIDIFF_SOURCE_DIR) / "tests/golden/sd35"; }
at::Tensor sd35_golden(const std::string& key) {
  return checkpoint::open(sd35_golden_dir() / "tiny-sd35-golden.safetensors").tensor(key);
}

TEST(Sd35Transformer, QkNormAndDualAttentionMatchDiffusers) {
  torch::NoGradGuard no_grad;
  auto transformer = load_sd3_transformer(sd35_golden_dir() / "transformer");
  EXPECT_TRUE(transformer->config().qk_norm);
  std::map<std::string, at::Tensor> recorded;
  auto out = transformer->forward(test::golden(golden_file, "tr_in_x"), test::golden(golden_file, "tr_in_t"),
                                  test::golden(golden_file, "tr_in_ctx"), test::golden(golden_file, "tr_in_pooled"),
                                  [&](const std::string& name, const at::Tensor& value) { recorded[name] = value; });
  for (const char* name : {"transformer_blocks.0.0", "transformer_blocks.0.1", "transformer_blocks.1.1"}) {
    ASSERT_TRUE(recorded.count(name)) << name;
    EXPECT_LT(test::relative_error(recorded[name], sd35_golden(std::string("tr_mid_") + name)), component_tolerance)
        << name;
  }
  EXPECT_LT(test::relative_error(out, sd35_golden("tr_out")), component_tolerance);
}

TEST(Sd35Transformer, UnsupportedSettingsAreClearErrors) {
  test::temp_dir dir;
  auto values = read_json_file(sd35_golden_dir() / "transformer/config.json");
  auto rejected = [&](const char* key, const nlohmann::json& value, const std::string& expected) {
    auto changed = values;
    changed[key] = value;
    test::write_file(dir / "config.json", changed.dump());
    try {
      sd3_transformer_config::from(read_config(dir / "config.json"));
      ADD_FAILURE() << key << " = " << value.dump() << " was accepted";
    } catch (const error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  };
  rejected("qk_norm", "layer_norm", "\"layer_norm\"; supported: null or \"rms_norm\"");
  rejected("dual_attention_layers", nlohmann::json::array({0, 2}), "names block 2 of 2");
}

TEST(Sd35Pipeline, FinalLatentsMatchDiffusers) {
  // tiny-sd3's folder with the SD3.5 transformer in place of its own, as a user's SD3.5 folder is laid out.
  test::temp_dir dir;
  auto pipeline = load_pipeline(test::make_tiny_sd35_folder(dir / "tiny-sd35"), {});
  const auto r = golden_request();
  EXPECT_LT(test::relative_error(generate_latents(*pipeline, r), sd35_golden("pipe_latents")), latents_tolerance);
}

TEST(Sd35SingleFile, LoadsAsDiffusersFromSingleFileLoadsIt) {
  // tiny-sd3 with the SD3.5 transformer as one file in the SD3.5 layout (fused qkv, ln_q/ln_k, attn2, swapped norm
  // halves; CLIP-L without its projection), written by test::write_tiny_sd35_single_file from the recipe that
  // tests/golden/make_single_file_goldens.py checked against diffusers' from_single_file.
  test::temp_dir dir;
  load_options options;
  options.config_from = dir / "config";
  const auto file = test::write_tiny_sd35_single_file(dir / "tiny-sd35.safetensors", options.config_from);
  auto pipeline = load_pipeline(file, options);
  const auto r = golden_request();
  const auto golden = checkpoint::open(std::filesystem::path(HYBRIDIFF_SOURCE_DIR) /
                                       "tests/golden/single_file/tiny-sd35-single-file-golden.safetensors")
                          .tensor("latents");
  EXPECT_LT(test::relative_error(generate_latents(*pipeline, r), golden), latents_tolerance);
  // An SDXL folder's configs do not fit it.
  options.config_from = test::fixtures_dir() / "tiny-sdxl";
  try {
    load_pipeline(file, options);
    ADD_FAILURE() << "loaded with SDXL configs";
  } catch (const error& failure) {
    EXPECT_NE(std::string(failure.what()).find("not a StableDiffusion3Pipeline folder"), std::string::npos)
        << failure.what();
  }
}

TEST(Sd35SingleFile, ItsT5EncoderLoadsWhenTheConfigFolderHasOne) {
  // The tiny SD3.5 file with tiny-t5 under "text_encoders.t5xxl.transformer." (transformers' layout), and a config
  // folder that lists a text_encoder_3 (tiny-t5's config): the encoder reads the file's tensors and reproduces
  // transformers' output.
  torch::NoGradGuard no_grad;
  test::temp_dir dir;
  const auto config = dir / "config";
  auto file = test::write_tiny_sd35_single_file(dir / "base.safetensors", config);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  const auto base = checkpoint::open(file);
  for (const auto& entry : base.entries()) tensors.emplace_back(entry.name, base.tensor(entry.name));
  const auto t5 = checkpoint::open(find_component_weights(test::fixtures_dir() / "tiny-t5"));
  for (const auto& entry : t5.entries())
    tensors.emplace_back("text_encoders.t5xxl.transformer." + entry.name, t5.tensor(entry.name));
  save_safetensors(dir / "with-t5.safetensors", tensors);
  {
    const auto folder = open_model(dir / "with-t5.safetensors", config);
    EXPECT_FALSE(folder.has("text_encoder_3"));  // tiny-sd3 has none: the file's T5 is not used (logged)
  }
  std::filesystem::create_directory_symlink(test::fixtures_dir() / "tiny-t5", config / "text_encoder_3");
  std::filesystem::create_directories(config / "tokenizer_3");
  test::write_file(config / "tokenizer_3/tokenizer_config.json", "{}");
  auto index = read_json_file(config / "model_index.json");
  index["text_encoder_3"] = {"transformers", "T5EncoderModel"};
  index["tokenizer_3"] = {"transformers", "T5TokenizerFast"};
  std::filesystem::remove(config / "model_index.json");  // a link to tiny-sd3's
  test::write_file(config / "model_index.json", index.dump());
  const auto folder = open_model(dir / "with-t5.safetensors", config);
  ASSERT_TRUE(folder.get("text_encoder_3").weights);
  auto encoder = load_t5_encoder(folder.get("text_encoder_3").dir, component_options(folder, "text_encoder_3", {}));
  EXPECT_LT(test::relative_error(encoder->forward(test::golden("tiny-t5-golden.safetensors", "input_ids")),
                                 test::golden("tiny-t5-golden.safetensors", "last_hidden_state")),
            component_tolerance);
}

TEST_F(Sd3Pipeline, BadSizesFailClearly) {
  auto r = request();
  r.height = 30;  // VAE factor 2 × patch 2 = 4 does not divide 30
  EXPECT_THROW(pipeline_->plan(r), error);
  r.height = 32;
  r.max_sequence_length = 0;
  EXPECT_THROW(pipeline_->plan(r), error);
}

}  // namespace
}  // namespace hybridiff::models
