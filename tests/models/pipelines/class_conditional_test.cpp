// The built-in model's pipeline (HybridiffClassConditionalPipeline) loaded from its committed folder as a user's
// folder is loaded: prompts, conditioning, errors, and that the trainer writes the committed configs.
#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/pipelines/class_conditional_pipeline.hpp"
#include "models/io/config.hpp"
#include "models/errors.hpp"
#include "models/eval/fashion_mnist.hpp"
#include "models/pipelines/pipeline.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

std::filesystem::path committed() {
  return std::filesystem::path(HYBRIDIFF_SOURCE_DIR) / "models" / "builtin" / "fashion-diffusion";
}

class_conditional_pipeline& as_builtin(diffusion_pipeline& pipeline) {
  return dynamic_cast<class_conditional_pipeline&>(pipeline);
}

TEST(ClassConditional, PromptsAreClassNamesSpelledLoosely) {
  auto loaded = load_pipeline(committed(), {});
  auto& pipeline = as_builtin(*loaded);
  EXPECT_EQ(pipeline.class_names(), fashion_mnist_classes());
  EXPECT_EQ(pipeline.label_of("sneaker"), 7);
  EXPECT_EQ(pipeline.label_of("  Ankle-Boot "), 9);
  EXPECT_EQ(pipeline.label_of("T-Shirt"), 0);
  try {
    pipeline.label_of("cat");
    FAIL() << "an unknown prompt was accepted";
  } catch (const error& bad) {
    EXPECT_NE(std::string(bad.what()).find("it draws: t-shirt, trouser, pullover"), std::string::npos) << bad.what();
  }
}

TEST(ClassConditional, TheNegativePromptIsTheNullClassOrAnotherClass) {
  auto loaded = load_pipeline(committed(), {});
  auto& pipeline = as_builtin(*loaded);
  generation_request request;
  request.prompt = "bag";
  const auto plan = pipeline.plan(request);
  EXPECT_EQ(plan.steps, 50);
  EXPECT_EQ(plan.height, 32);
  EXPECT_DOUBLE_EQ(plan.guidance, 4.0);  // model_index.json's default_guidance
  auto both = pipeline.encode_prompt(request, plan);
  ASSERT_EQ(both.positive.context.sizes(), (c10::IntArrayRef{1, 4, 128}));
  EXPECT_TRUE(torch::equal(both.positive.context, pipeline.context_of(8)));
  EXPECT_TRUE(torch::equal(both.negative.context, pipeline.context_of(10)));  // the null class (label dropout)
  request.negative_prompt = "";
  EXPECT_TRUE(torch::equal(pipeline.encode_prompt(request, plan).negative.context, pipeline.context_of(10)));
  request.negative_prompt = "trouser";
  EXPECT_TRUE(torch::equal(pipeline.encode_prompt(request, plan).negative.context, pipeline.context_of(1)));
  // Sizes: multiples of the UNet's downsampling factor 4.
  request.height = 30;
  EXPECT_THROW(pipeline.plan(request), error);
}

TEST(ClassConditional, TheTrainerWritesTheCommittedConfigs) {
  test::temp_dir dir;
  class_conditional_layout layout;
  layout.class_names = fashion_mnist_classes();
  write_class_conditional_configs(dir.path(), layout);
  for (const char* file : {"model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                           "class_embedder/config.json"})
    EXPECT_EQ(read_json_file(dir / file), read_json_file(committed() / file)) << file;
}

TEST(ClassConditional, BrokenFoldersAreClearErrors) {
  test::temp_dir dir;
  class_conditional_layout layout;
  layout.class_names = {"a", "b"};
  write_class_conditional_configs(dir.path(), layout);
  // Configs without weights.
  try {
    load_pipeline(dir.path(), {});
    FAIL() << "a folder without weights loaded";
  } catch (const error& bad) {
    EXPECT_NE(std::string(bad.what()).find("unet"), std::string::npos) << bad.what();
  }
  auto unet = make_class_conditional_unet(dir.path());
  auto embedder = make_class_embedder(dir.path());
  save_class_conditional_weights(dir.path(), *unet, *embedder, torch::kHalf);
  EXPECT_NO_THROW(load_pipeline(dir.path(), {}));
  // A class embedder whose width differs from the UNet's cross-attention width.
  auto values = read_json_file(dir / "class_embedder" / "config.json");
  values["embedding_dim"] = 64;
  std::ofstream(dir / "class_embedder" / "config.json") << values.dump();
  try {
    load_pipeline(dir.path(), {});
    FAIL() << "mismatched widths loaded";
  } catch (const error& bad) {
    EXPECT_NE(std::string(bad.what()).find("cross_attention_dim 128 differs from class_embedder's embedding_dim 64"),
              std::string::npos)
        << bad.what();
  }
  values["class_names"] = nlohmann::json::array();
  std::ofstream(dir / "class_embedder" / "config.json") << values.dump();
  EXPECT_THROW(load_pipeline(dir.path(), {}), error);
}

}  // namespace
}  // namespace hybridiff::models
