// `hybridiff metrics` run as a user runs it: folders of PNGs in, numbers on stdout and in --json out. The
// expected numbers are computed here in-process from the library (classifier_accuracy, the classifier's features)
// or from closed forms, never read back from the command's own code path.
#include <cmath>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "cli/run_binary.hpp"
#include "models/eval/fashion_mnist.hpp"
#include "models/io/image_io.hpp"
#include "models/eval/image_metrics.hpp"
#include "models/io/safetensors.hpp"
#include "metric_weights.hpp"
#include "test_support.hpp"

namespace hybridiff {
using test::quoted;
using test::run_hybridiff;
namespace {

const std::vector<std::string> prefixes = {"t-shirt", "trouser", "pullover", "dress", "coat",
                                           "sandal",  "shirt",   "sneaker",  "bag",   "ankle-boot"};

nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream file(path);
  EXPECT_TRUE(file) << path;
  return nlohmann::json::parse(file);
}

std::filesystem::path builtin_classifier() {
  return std::filesystem::path(HYBRIDIFF_SOURCE_DIR) / "models" / "builtin" / "fashion-classifier";
}

// Writes `images` (uint8 [N, 28, 28]) as <class>_<index>.png: even indices 32×32 grey (padded as the classifier
// expects), odd ones 28×28 RGB (the command pads those itself).
void write_fashion_pngs(const std::filesystem::path& dir, const at::Tensor& images, const at::Tensor& labels) {
  std::filesystem::create_directories(dir);
  for (std::int64_t i = 0; i < images.size(0); ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "%s_%04ld.png", prefixes[labels[i].item<std::int64_t>()].c_str(), static_cast<long>(i));
    auto pixels = images[i].to(torch::kFloat32).div(255.0).unsqueeze(0);  // [1, 28, 28] in [0, 1]
    if (i % 2 == 0)
      models::save_png(dir / name, torch::constant_pad_nd(pixels, {2, 2, 2, 2}, 0.0));  // [1, 32, 32]
    else
      models::save_png(dir / name, pixels.repeat({3, 1, 1}));  // [3, 28, 28]
  }
}

TEST(MetricsCli, RealTestImagesAreClassifiedAndCloseToTheTestSet) {
  test::temp_dir dir;
  const auto data = models::load_fashion_mnist(models::fashion_mnist_dir(), /*train=*/false);
  const std::int64_t n = 300;
  const auto images = data.images.slice(0, 0, n), labels = data.labels.slice(0, 0, n);
  write_fashion_pngs(dir / "real", images, labels);
  auto result = run_hybridiff("metrics --generated " + quoted(dir / "real") + " --json " + quoted(dir / "real.json"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("accuracy: "), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("feature FID"), std::string::npos) << result.output;
  const auto report = read_json(dir / "real.json");

  // The same images through the library, in process.
  auto classifier = models::load_fashion_classifier(builtin_classifier());
  const double expected_accuracy = models::classifier_accuracy(classifier, images, labels);
  EXPECT_GE(expected_accuracy, 0.9);  // the committed classifier: 91.5 % on the whole test set
  EXPECT_NEAR(report["accuracy"].get<double>(), expected_accuracy, 1e-12) << report.dump();
  EXPECT_EQ(report["count"].get<std::int64_t>(), n);
  EXPECT_EQ(report["data_count"].get<std::int64_t>(), 10000);
  std::int64_t counted = 0;
  for (std::int64_t label = 0; label < 10; ++label) {
    const auto expected = labels.eq(label).sum().item<std::int64_t>();
    ASSERT_TRUE(report["per_class"].contains(prefixes[label])) << prefixes[label];
    EXPECT_EQ(report["per_class"][prefixes[label]]["count"].get<std::int64_t>(), expected) << prefixes[label];
    counted += report["per_class"][prefixes[label]]["correct"].get<std::int64_t>();
  }
  EXPECT_EQ(counted, report["correct"].get<std::int64_t>());
  torch::NoGradGuard no_grad;
  const double expected_fid = models::frechet_distance(classifier->features(models::to_model_pixels(images)),
                                                       classifier->features(models::to_model_pixels(data.images)));
  const double real_fid = report["feature_fid"].get<double>();
  EXPECT_NEAR(real_fid, expected_fid, 1e-6 * expected_fid);

  // Uniform noise named as the same classes: far from the test set's features.
  auto noise = torch::randint(0, 256, {n, 28, 28}, torch::kUInt8);
  write_fashion_pngs(dir / "noise", noise, labels);
  result = run_hybridiff("metrics --generated " + quoted(dir / "noise") + " --json " + quoted(dir / "noise.json"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const double noise_fid = read_json(dir / "noise.json")["feature_fid"].get<double>();
  EXPECT_GT(noise_fid, 10.0 * real_fid) << "real " << real_fid << ", noise " << noise_fid;
}


TEST(MetricsCli, ReferenceFolderGivesPsnrAndLpips) {
  test::temp_dir dir;
  std::filesystem::create_directories(dir / "generated");
  std::filesystem::create_directories(dir / "same");
  std::filesystem::create_directories(dir / "shifted");
  torch::manual_seed(1);
  for (const char* name : {"a.png", "b.png", "c.png"}) {
    auto image = torch::randint(0, 200, {3, 32, 32}).to(torch::kFloat32);  // 8-bit levels, exact in a PNG
    models::save_png(dir / "generated" / name, image / 255.0);
    models::save_png(dir / "same" / name, image / 255.0);
    models::save_png(dir / "shifted" / name, (image + 26.0) / 255.0);  // every value 26 levels brighter
  }
  models::save_safetensors(dir / "lpips.safetensors", test::random_lpips_weights());
  const auto common = "metrics --no-classifier --generated " + quoted(dir / "generated") + " --lpips-weights " +
                      quoted(dir / "lpips.safetensors") + " --reference ";
  auto result = run_hybridiff(common + quoted(dir / "same") + " --json " + quoted(dir / "same.json"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("PSNR mean: inf dB"), std::string::npos) << result.output;
  auto report = read_json(dir / "same.json");
  EXPECT_EQ(report["psnr_mean"], "inf");
  EXPECT_EQ(report["pairs"].get<int>(), 3);
  EXPECT_EQ(report["identical_pairs"].get<int>(), 3);
  EXPECT_LT(std::abs(report["lpips_mean"].get<double>()), 1e-7);
  EXPECT_FALSE(report.contains("accuracy"));  // --no-classifier

  result = run_hybridiff(common + quoted(dir / "shifted") + " --json " + quoted(dir / "shifted.json"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  report = read_json(dir / "shifted.json");
  const double expected = 20.0 * std::log10(255.0 / 26.0);  // MSE (26/255)²
  EXPECT_NEAR(report["psnr"]["b.png"].get<double>(), expected, 1e-4) << report.dump();
  EXPECT_NEAR(report["psnr_mean"].get<double>(), expected, 1e-4);
  EXPECT_GT(report["lpips"]["a.png"].get<double>(), 0.0);
}

TEST(MetricsCli, InceptionFidOfAFolderWithItselfIsZero) {
  test::temp_dir dir;
  std::filesystem::create_directories(dir / "generated");
  for (int i = 0; i < 3; ++i) models::save_png(dir / "generated" / ("x" + std::to_string(i) + ".png"), torch::rand({1, 32, 32}));
  models::save_safetensors(dir / "inception.safetensors", test::random_inception_weights());
  auto result = run_hybridiff("metrics --no-classifier --generated " + quoted(dir / "generated") + " --reference " +
                              quoted(dir / "generated") + " --inception-weights " + quoted(dir / "inception.safetensors") +
                              " --json " + quoted(dir / "fid.json"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("FID (Inception"), std::string::npos) << result.output;
  // Features of the same 3 images on both sides: 0 up to rounding (the features are O(1), their traces O(10³)).
  EXPECT_LT(read_json(dir / "fid.json")["fid"].get<double>(), 1e-3);
}

TEST(MetricsCli, BadInputExitsNonZeroWithTheReason) {
  test::temp_dir dir;
  for (const char* folder : {"bad_prefix", "pairs_a", "pairs_b", "large"}) std::filesystem::create_directories(dir / folder);
  const auto grey = torch::zeros({1, 32, 32});
  models::save_png(dir / "bad_prefix" / "jacket_0001.png", grey);
  models::save_png(dir / "pairs_a" / "a.png", grey);
  models::save_png(dir / "pairs_a" / "b.png", grey);
  models::save_png(dir / "pairs_b" / "a.png", grey);
  models::save_png(dir / "pairs_b" / "c.png", grey);
  models::save_png(dir / "large" / "coat_1.png", torch::zeros({1, 64, 64}));
  struct expectation {
    std::string arguments;
    int exit_code;
    std::string message;
  };
  const expectation cases[] = {
      {"--generated " + quoted(dir / "bad_prefix"), 1,
       "jacket_0001.png: the file name's prefix 'jacket' (before the first '_') names no Fashion-MNIST class"},
      {"--generated " + quoted(dir / "bad_prefix"), 1, "t-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle-boot"},
      {"--no-classifier --generated " + quoted(dir / "pairs_a") + " --reference " + quoted(dir / "pairs_b"), 1,
       "the first difference, in sorted order: b.png vs c.png"},
      {"--generated " + quoted(dir / "large"), 1, "coat_1.png: 64x64 pixels; the Fashion-MNIST classifier takes 32x32"},
      {"--generated " + quoted(dir / "missing"), 1, "missing (--generated): not a folder"},
      {"--generated " + quoted(dir / "pairs_a") + " --lpips-weights x.safetensors", 2, "give --reference DIR"},
      {"--no-classifier --generated " + quoted(dir / "pairs_a"), 2, "nothing to measure"},
      {"--no-classifier --generated " + quoted(dir / "pairs_a") + " --reference " + quoted(dir / "pairs_a") +
           " --lpips-weights " + quoted(dir / "none.safetensors"), 1, "none.safetensors"},
  };
  for (const auto& c : cases) {
    auto result = run_hybridiff("metrics " + c.arguments);
    EXPECT_EQ(result.exit_code, c.exit_code) << c.arguments << "\n" << result.output;
    EXPECT_NE(result.output.find(c.message), std::string::npos) << c.arguments << "\n" << result.output;
  }
  // A binary away from its source tree: the built-in classifier is not found, and the error says what to set.
  auto result = test::run_shell("HYBRIDIFF_BUILTIN=" + quoted(dir / "nowhere") + " " + test::hybridiff_binary() +
                                " metrics --generated " + quoted(dir / "large"));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("set HYBRIDIFF_BUILTIN"), std::string::npos) << result.output;
}

}  // namespace
}  // namespace hybridiff
