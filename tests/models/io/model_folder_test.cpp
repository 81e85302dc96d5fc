#include "models/io/model_folder.hpp"

#include <gtest/gtest.h>

#include "models/errors.hpp"
#include "models/io/inventory.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

using test::temp_dir;
using test::write_file;

template <class Call>
std::string error_of(Call call) {
  try {
    call();
  } catch (const error& failure) {
    return failure.what();
  }
  ADD_FAILURE() << "expected a hybridiff::error";
  return "";
}

TEST(ModelFolder, OpensTinySdxlWithItsSevenComponents) {
  auto folder = model_folder::open(test::fixtures_dir() / "tiny-sdxl");
  EXPECT_EQ(folder.pipeline_class(), "StableDiffusionXLPipeline");
  std::map<std::string, std::string> classes;
  for (const auto& part : folder.components()) classes[part.name] = part.class_name;
  // tiny-sdxl/model_index.json (feature_extractor and image_encoder are [null, null]).
  std::map<std::string, std::string> expected = {
      {"scheduler", "EulerDiscreteScheduler"},  {"text_encoder", "CLIPTextModel"},
      {"text_encoder_2", "CLIPTextModelWithProjection"}, {"tokenizer", "CLIPTokenizer"},
      {"tokenizer_2", "CLIPTokenizer"},         {"unet", "UNet2DConditionModel"},
      {"vae", "AutoencoderKL"}};
  EXPECT_EQ(classes, expected);
  EXPECT_TRUE(folder.index()["force_zeros_for_empty_prompt"].get<bool>());
}

TEST(ModelFolder, ParameterCountsEqualDiffusers) {
  // Expected: sum(p.numel() for p in model.parameters()) of each component loaded with diffusers 0.42 /
  // transformers 5.24 from the same folders.
  std::map<std::string, std::int64_t> expected_sdxl = {
      {"text_encoder", 55183}, {"text_encoder_2", 56207}, {"unet", 2269092}, {"vae", 218791},
      {"scheduler", 0},        {"tokenizer", 0},          {"tokenizer_2", 0}};
  for (const auto& summary : summarize(model_folder::open(test::fixtures_dir() / "tiny-sdxl")))
    EXPECT_EQ(summary.parameter_count, expected_sdxl.at(summary.name)) << summary.name;
  std::map<std::string, std::int64_t> expected_sd3 = {{"transformer", 291520}, {"vae", 229091}, {"text_encoder", 19322}};
  for (const auto& summary : summarize(model_folder::open(test::fixtures_dir() / "tiny-sd3")))
    if (expected_sd3.count(summary.name)) EXPECT_EQ(summary.parameter_count, expected_sd3.at(summary.name)) << summary.name;
  auto t5 = summarize(model_folder::open(test::fixtures_dir() / "tiny-t5"));
  ASSERT_EQ(t5.size(), 1u);
  EXPECT_EQ(t5[0].class_name, "T5EncoderModel");
  EXPECT_EQ(t5[0].parameter_count, 60848);
  EXPECT_EQ(t5[0].dtypes, std::vector<std::string>{"F32"});
}

TEST(ModelFolder, Sd3FolderWithoutT5) {
  auto folder = model_folder::open(test::fixtures_dir() / "tiny-sd3");
  EXPECT_EQ(folder.pipeline_class(), "StableDiffusion3Pipeline");
  EXPECT_TRUE(folder.has("transformer"));
  EXPECT_FALSE(folder.has("text_encoder_3"));
  auto message = error_of([&] { folder.get("text_encoder_3"); });
  EXPECT_NE(message.find("missing component 'text_encoder_3'"), std::string::npos) << message;
  auto scheduler = folder.component_config("scheduler");
  EXPECT_DOUBLE_EQ(scheduler.get<double>("shift"), 3.0);  // tiny-sd3/scheduler/scheduler_config.json
}

TEST(Config, DefaultsFillWhatTheFileLeavesOut) {
  temp_dir dir;
  write_file(dir / "config.json", R"({"_class_name": "AutoencoderKL", "latent_channels": 16})");
  auto values = read_config(dir / "config.json");
  EXPECT_EQ(values.get<int>("latent_channels"), 16);           // from the file
  EXPECT_DOUBLE_EQ(values.get<double>("scaling_factor"), 0.18215);  // AutoencoderKL's default
  EXPECT_TRUE(values.get<bool>("force_upcast"));
  EXPECT_FALSE(values.has("shift_factor"));  // default None
  EXPECT_EQ(values.get_per_block("block_out_channels", 1), std::vector<int>{64});
}

TEST(Config, PerBlockListsAcceptScalars) {
  temp_dir dir;
  write_file(dir / "config.json", R"({"_class_name": "UNet2DConditionModel", "transformer_layers_per_block": [1, 2]})");
  auto values = read_config(dir / "config.json");
  EXPECT_EQ(values.get_per_block("layers_per_block", 3), (std::vector<int>{2, 2, 2}));
  auto message = error_of([&] { values.get_per_block("transformer_layers_per_block", 3); });
  EXPECT_NE(message.find("transformer_layers_per_block"), std::string::npos) << message;
}

TEST(ConfigErrors, MissingKeyAndWrongTypeNameTheFile) {
  temp_dir dir;
  write_file(dir / "config.json", R"({"hidden_size": "wide"})");
  auto values = read_config(dir / "config.json");
  auto missing = error_of([&] { values.get<int>("num_layers"); });
  EXPECT_NE(missing.find((dir / "config.json").string()), std::string::npos) << missing;
  EXPECT_NE(missing.find("missing config key 'num_layers'"), std::string::npos) << missing;
  auto wrong = error_of([&] { values.get<int>("hidden_size"); });
  EXPECT_NE(wrong.find("wrong type"), std::string::npos) << wrong;
}

TEST(ConfigErrors, MalformedJsonNamesTheFile) {
  temp_dir dir;
  write_file(dir / "config.json", "{\"a\": 1,");
  auto message = error_of([&] { read_config(dir / "config.json"); });
  EXPECT_NE(message.find("config.json: malformed JSON"), std::string::npos) << message;
}

TEST(ModelFolderErrors, MissingComponentFolder) {
  temp_dir dir;
  write_file(dir / "model_index.json",
             R"({"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"]})");
  auto message = error_of([&] { model_folder::open(dir.path()); });
  EXPECT_NE(message.find("component 'unet'"), std::string::npos) << message;
  EXPECT_NE(message.find("has no folder"), std::string::npos) << message;
}

TEST(ModelFolderErrors, ComponentNamesCannotReachOutsideTheFolder) {
  temp_dir dir;
  std::filesystem::create_directories(dir / "inside");
  write_file(dir / "inside" / "model_index.json",
             R"({"_class_name": "StableDiffusionXLPipeline", "../outside": ["diffusers", "AutoencoderKL"]})");
  std::filesystem::create_directories(dir / "outside");
  write_file(dir / "outside" / "config.json", R"({"_class_name": "AutoencoderKL"})");
  auto message = error_of([&] { model_folder::open(dir / "inside"); });
  EXPECT_NE(message.find("component name '../outside' is not a plain name"), std::string::npos) << message;
}

TEST(ModelFolderErrors, ComponentWithoutConfig) {
  temp_dir dir;
  write_file(dir / "model_index.json",
             R"({"_class_name": "StableDiffusionXLPipeline", "vae": ["diffusers", "AutoencoderKL"]})");
  std::filesystem::create_directories(dir / "vae");
  auto message = error_of([&] { model_folder::open(dir.path()); });
  EXPECT_NE(message.find("missing config.json for AutoencoderKL"), std::string::npos) << message;
}

TEST(ModelFolderErrors, NotAModelFolder) {
  temp_dir dir;
  auto message = error_of([&] { model_folder::open(dir.path()); });
  EXPECT_NE(message.find("not a model folder"), std::string::npos) << message;
  message = error_of([&] { model_folder::open(dir / "nope"); });
  EXPECT_NE(message.find("does not exist"), std::string::npos) << message;
  write_file(dir / "model_index.json", "[1, 2");
  message = error_of([&] { model_folder::open(dir.path()); });
  EXPECT_NE(message.find("model_index.json: malformed JSON"), std::string::npos) << message;
}

TEST(ModelFolder, HuggingFaceCacheFoldersOpenAtTheirSnapshot) {
  temp_dir home;  // HF_HOME; the cache is its hub/
  const auto cache = home / "hub";
  const auto repository =
      test::make_hub_repository(test::fixtures_dir() / "tiny-sdxl", cache, "hybridiff/tiny-sdxl", "c0ffee");
  const auto snapshot = repository / "snapshots" / "c0ffee";
  // The repository folder opens at the snapshot refs/main names, and so does its id where the cache is.
  EXPECT_EQ(model_folder::open(repository).dir(), snapshot);
  EXPECT_EQ(model_folder::open(repository).pipeline_class(), "StableDiffusionXLPipeline");
  {
    test::scoped_environment hub_cache("HF_HUB_CACHE", cache.string());
    EXPECT_EQ(model_folder::open("hybridiff/tiny-sdxl").dir(), snapshot);
    auto message = error_of([&] { model_folder::open("hybridiff/absent-model"); });
    EXPECT_NE(message.find("hybridiff/absent-model: model folder does not exist, nor is it in the Hugging Face cache"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find((cache / "models--hybridiff--absent-model").string()), std::string::npos) << message;
  }
  {
    test::scoped_environment no_hub_cache("HF_HUB_CACHE", "");
    test::scoped_environment hf_home("HF_HOME", home.path().string());
    EXPECT_EQ(model_folder::open("hybridiff/tiny-sdxl").dir(), snapshot);
  }
  // Two snapshots and no refs/main: the user names one.
  test::make_hub_repository(test::fixtures_dir() / "tiny-sdxl", cache, "hybridiff/tiny-sdxl", "beef");
  std::filesystem::remove(repository / "refs" / "main");
  auto message = error_of([&] { model_folder::open(repository); });
  EXPECT_NE(message.find("several snapshots (beef, c0ffee)"), std::string::npos) << message;
}

}  // namespace
}  // namespace hybridiff::models
