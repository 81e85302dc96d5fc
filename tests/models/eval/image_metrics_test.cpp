// The quality metrics of models/eval/image_metrics.hpp. The networks' weights are random, made here and written to a
// safetensors file under the key names that docs/models.md documents (the Python packages' names), then loaded by path as
// a user would. Expected values come from closed forms or from the metric's definition written out here with
// plain torch ops.
#include "models/eval/image_metrics.hpp"

#include <cmath>
#include <limits>
#include <map>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/errors.hpp"
#include "models/io/safetensors.hpp"
#include "metric_weights.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

using test::named_tensors;
using test::random_inception_weights;
using test::random_lpips_weights;

// images [N, C, H, W] -> [N, C, size, size], bilinear with align_corners=False (PyTorch's F.interpolate default).
at::Tensor bilinear(const at::Tensor& images, std::int64_t size) {
  namespace F = torch::nn::functional;
  return F::interpolate(images, F::InterpolateFuncOptions()
                                    .size(std::vector<std::int64_t>{size, size})
                                    .mode(torch::kBilinear)
                                    .align_corners(false));
}

std::string error_text(const std::function<void()>& action) {
  try {
    action();
  } catch (const error& failure) {
    return failure.what();
  }
  return "(no error)";
}

// ---- PSNR ------------------------------------------------------------------------------------------------------

TEST(Psnr, IdenticalImagesAreInfinite) {
  auto image = torch::rand({1, 3, 32, 32});
  EXPECT_EQ(psnr(image, image.clone()), std::numeric_limits<double>::infinity());
}

TEST(Psnr, KnownMeanSquaredErrors) {
  auto a = torch::full({1, 1, 32, 32}, 0.5);
  // Every pixel off by 0.1: MSE 0.01, 10·log10(100) = 20 dB.
  EXPECT_NEAR(psnr(a, a + 0.1), 20.0, 1e-5);
  // Half the pixels off by 0.2: MSE 0.02, 10·log10(50).
  auto b = a.clone();
  b.slice(2, 0, 16) += 0.2;
  EXPECT_NEAR(psnr(a, b), 10.0 * std::log10(50.0), 1e-5);
  EXPECT_NEAR(psnr(b, a), 10.0 * std::log10(50.0), 1e-5);
}

TEST(Psnr, DifferentShapesAreNamed) {
  auto message = error_text([] { psnr(torch::zeros({1, 3, 32, 32}), torch::zeros({1, 1, 32, 32})); });
  EXPECT_NE(message.find("[1, 3, 32, 32] and [1, 1, 32, 32]"), std::string::npos) << message;
}

// ---- Fréchet distance ------------------------------------------------------------------------------------------

// 2·copies·D samples of mean `mean` whose unbiased sample covariance is exactly diag(variance): mean ± c_i·e_i,
// each `copies` times, with c_i² = variance_i·(n − 1)/(2·copies) (n = 2·copies·D samples).
at::Tensor axis_samples(const std::vector<double>& mean, const std::vector<double>& variance, int copies) {
  const auto dims = static_cast<std::int64_t>(mean.size());
  const auto n = 2 * copies * dims;
  auto samples = torch::tensor(mean, torch::kFloat64).repeat({n, 1});  // [n, D]
  std::int64_t row = 0;
  for (std::int64_t i = 0; i < dims; ++i) {
    const double offset = std::sqrt(variance[i] * static_cast<double>(n - 1) / (2.0 * copies));
    for (int copy = 0; copy < copies; ++copy)
      for (double sign : {1.0, -1.0}) samples[row++][i] += sign * offset;
  }
  return samples;
}

TEST(Frechet, DiagonalGaussiansMatchTheClosedForm) {
  const std::vector<double> mean_a = {0.0, 1.0, -2.0, 0.5}, var_a = {1.0, 4.0, 0.25, 2.0};
  const std::vector<double> mean_b = {1.0, 1.0, 0.0, -0.5}, var_b = {9.0, 1.0, 0.25, 0.5};
  // ||μa − μb||² + Σ (σa + σb − 2·√(σa·σb)) for diagonal covariances.
  double expected = 0.0;
  for (std::size_t i = 0; i < mean_a.size(); ++i)
    expected += (mean_a[i] - mean_b[i]) * (mean_a[i] - mean_b[i]) + var_a[i] + var_b[i] - 2.0 * std::sqrt(var_a[i] * var_b[i]);
  ASSERT_NEAR(expected, 1 + 0 + 4 + 1 + (1 + 9 - 6) + (4 + 1 - 4) + 0 + (2 + 0.5 - 2), 1e-12);  // 11.5, by hand
  auto a = axis_samples(mean_a, var_a, 1);  // 8 samples
  auto b = axis_samples(mean_b, var_b, 3);  // 24 samples
  EXPECT_NEAR(frechet_distance(a, b), expected, 1e-9);
  EXPECT_NEAR(frechet_distance(b, a), expected, 1e-9);
  // float32 features are accepted (computed in float64 inside).
  EXPECT_NEAR(frechet_distance(a.to(torch::kFloat32), b.to(torch::kFloat32)), expected, 1e-4);
  // A common rotation makes both covariances full matrices and leaves the distance unchanged.
  torch::manual_seed(3);
  auto rotation = std::get<0>(torch::linalg_qr(torch::randn({4, 4}, torch::kFloat64)));  // orthogonal [4, 4]
  EXPECT_NEAR(frechet_distance(a.mm(rotation), b.mm(rotation)), expected, 1e-9);
  // 300 more dimensions, constant and equal in both sets, add nothing; with D = 304 above the sample counts the
  // distance takes its other route (no D×D matrices).
  auto padded_a = torch::cat({a, torch::full({a.size(0), 300}, 0.25, torch::kFloat64)}, 1);  // [8, 304]
  auto padded_b = torch::cat({b, torch::full({b.size(0), 300}, 0.25, torch::kFloat64)}, 1);  // [24, 304]
  EXPECT_NEAR(frechet_distance(padded_a, padded_b), expected, 1e-9);
  auto rotation304 = std::get<0>(torch::linalg_qr(torch::randn({304, 304}, torch::kFloat64)));
  EXPECT_NEAR(frechet_distance(padded_a.mm(rotation304), padded_b.mm(rotation304)), expected, 1e-9);
}

TEST(Frechet, ASetAgainstItselfIsZero) {
  torch::manual_seed(5);
  auto features = torch::randn({200, 32}).mul(3.0).add(1.0);
  EXPECT_NEAR(frechet_distance(features, features), 0.0, 1e-8);
  // More dimensions than samples: singular covariances, still ≈ 0 (tolerance relative to tr(Σ) ≈ 9·64).
  auto few = torch::randn({10, 64}).mul(3.0);
  EXPECT_NEAR(frechet_distance(few, few), 0.0, 1e-6 * 9 * 64);
}

TEST(Frechet, BadInputsAreClearErrors) {
  EXPECT_NE(error_text([] { frechet_distance(torch::zeros({1, 4}), torch::zeros({5, 4})); }).find("at least 2"),
            std::string::npos);
  EXPECT_NE(error_text([] { frechet_distance(torch::zeros({5, 4}), torch::zeros({5, 3})); }).find("[5, 4] and [5, 3]"),
            std::string::npos);
  EXPECT_NE(error_text([] { frechet_distance(torch::zeros({5}), torch::zeros({5, 3})); }).find("[N, D]"),
            std::string::npos);
}

// ---- LPIPS -----------------------------------------------------------------------------------------------------


// LPIPS written out from its definition: images [N, 3, H, W] in [0, 1] -> [N].
at::Tensor reference_lpips(const named_tensors& list, const at::Tensor& a, const at::Tensor& b) {
  std::map<std::string, at::Tensor> w(list.begin(), list.end());
  auto trunk = [&](const at::Tensor& image) {
    const auto shift = torch::tensor({-.030, -.088, -.188}).view({1, 3, 1, 1});
    const auto scale = torch::tensor({.458, .448, .450}).view({1, 3, 1, 1});
    auto x = (image * 2 - 1 - shift) / scale;
    std::vector<at::Tensor> relus;
    x = torch::relu(torch::conv2d(x, w["net.slice1.0.weight"], w["net.slice1.0.bias"], 4, 2));
    relus.push_back(x);
    x = torch::relu(torch::conv2d(torch::max_pool2d(x, 3, 2), w["net.slice2.3.weight"], w["net.slice2.3.bias"], 1, 2));
    relus.push_back(x);
    x = torch::relu(torch::conv2d(torch::max_pool2d(x, 3, 2), w["net.slice3.6.weight"], w["net.slice3.6.bias"], 1, 1));
    relus.push_back(x);
    x = torch::relu(torch::conv2d(x, w["net.slice4.8.weight"], w["net.slice4.8.bias"], 1, 1));
    relus.push_back(x);
    relus.push_back(torch::relu(torch::conv2d(x, w["net.slice5.10.weight"], w["net.slice5.10.bias"], 1, 1)));
    return relus;
  };
  auto fa = trunk(a), fb = trunk(b);
  auto total = torch::zeros({a.size(0)});
  for (int k = 0; k < 5; ++k) {
    auto na = fa[k] / (fa[k].pow(2).sum(1, true).sqrt() + 1e-10);
    auto nb = fb[k] / (fb[k].pow(2).sum(1, true).sqrt() + 1e-10);
    auto weighted = torch::conv2d((na - nb).pow(2), w["lin" + std::to_string(k) + ".model.1.weight"]);  // [N, 1, h, w]
    total += weighted.mean({1, 2, 3});
  }
  return total;
}

class Lpips : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = random_lpips_weights();
    save_safetensors(dir_ / "lpips-alex.safetensors", weights_);
  }
  test::temp_dir dir_;
  named_tensors weights_;
};

TEST_F(Lpips, IdenticalImagesGiveZero) {
  auto metric = lpips_alex::load(dir_ / "lpips-alex.safetensors");
  auto images = torch::rand({3, 3, 64, 64});
  auto distances = metric.distance(images, images.clone());
  ASSERT_EQ(distances.sizes(), (c10::IntArrayRef{3}));
  EXPECT_LT(distances.abs().max().item<float>(), 1e-7);
}

TEST_F(Lpips, SymmetricPositiveAndAsDefined) {
  auto metric = lpips_alex::load(dir_ / "lpips-alex.safetensors");
  torch::manual_seed(2);
  auto a = torch::rand({2, 3, 64, 64});
  auto b = (a + 0.2 * torch::randn({2, 3, 64, 64})).clamp(0, 1);
  auto ab = metric.distance(a, b);
  auto ba = metric.distance(b, a);
  EXPECT_TRUE(torch::allclose(ab, ba, 1e-5, 1e-7)) << ab << ba;
  EXPECT_GT(ab.min().item<float>(), 0.0f);
  auto expected = reference_lpips(weights_, a, b);
  EXPECT_TRUE(torch::allclose(ab, expected, 1e-4, 1e-7)) << ab << expected;
}

TEST_F(Lpips, SmallGreyImagesAreRepeatedAndUpsampled) {
  auto metric = lpips_alex::load(dir_ / "lpips-alex.safetensors");
  torch::manual_seed(4);
  auto a = torch::rand({2, 1, 32, 32});
  auto b = torch::rand({2, 1, 32, 32});
  // The same pixels, as the definition takes them: RGB, and upsampled ×2 (bilinear, align_corners=False) to 64×64.
  auto as_rgb64 = [](const at::Tensor& grey) {
    auto rgb = grey.expand({-1, 3, -1, -1});
    return bilinear(rgb, 64);
  };
  auto distances = metric.distance(a, b);
  auto expected = reference_lpips(weights_, as_rgb64(a), as_rgb64(b));
  EXPECT_TRUE(torch::allclose(distances, expected, 1e-4, 1e-7)) << distances << expected;
  EXPECT_NE(error_text([&] { metric.distance(a, torch::rand({2, 1, 64, 64})); }).find("differ in shape"),
            std::string::npos);
}

TEST_F(Lpips, MissingKeyAndWrongShapeAreNamed) {
  auto without = weights_;
  without.erase(without.begin() + 13);  // lin3.model.1.weight
  ASSERT_EQ(weights_[13].first, "lin3.model.1.weight");
  save_safetensors(dir_ / "missing.safetensors", without);
  auto message = error_text([&] { lpips_alex::load(dir_ / "missing.safetensors"); });
  EXPECT_NE(message.find("missing.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find("missing keys (1): lin3.model.1.weight"), std::string::npos) << message;

  auto reshaped = weights_;
  reshaped[2].second = torch::zeros({192, 64, 3, 3});  // net.slice2.3.weight is 5×5
  ASSERT_EQ(reshaped[2].first, "net.slice2.3.weight");
  save_safetensors(dir_ / "reshaped.safetensors", reshaped);
  message = error_text([&] { lpips_alex::load(dir_ / "reshaped.safetensors"); });
  EXPECT_NE(message.find("net.slice2.3.weight (checkpoint [192,64,3,3]"), std::string::npos) << message;
}

// ---- pytorch-fid's InceptionV3 ---------------------------------------------------------------------------------


// One weights file for the suite (≈ 87 MB of float32: the full network).
class FidInception : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::temp_dir;
    save_safetensors(*dir_ / "inception.safetensors", random_inception_weights());
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static test::temp_dir* dir_;
};
test::temp_dir* FidInception::dir_ = nullptr;

TEST_F(FidInception, PoolFeaturesAndFidOfASetWithItself) {
  auto inception = fid_inception::load(*dir_ / "inception.safetensors");
  torch::manual_seed(8);
  auto grey = torch::rand({3, 1, 32, 32});
  auto features = inception.features(grey, /*batch=*/2);  // two batches
  ASSERT_EQ(features.sizes(), (c10::IntArrayRef{3, 2048}));
  EXPECT_GE(features.min().item<float>(), 0.0f);  // an average of ReLU outputs
  EXPECT_GT(features.std().item<float>(), 0.0f);
  // Singular covariances (3 samples, 2048 dimensions): ≈ 0 up to rounding relative to tr(Σ).
  auto centred = features.to(torch::kFloat64) - features.to(torch::kFloat64).mean(0);
  const double trace = centred.pow(2).sum().item<double>() / 2.0;
  ASSERT_GT(trace, 0.0);
  EXPECT_NEAR(frechet_distance(features, features), 0.0, 1e-6 * trace);
  // Sets of different images are at a positive distance.
  EXPECT_GT(frechet_distance(features.slice(0, 0, 2), features.slice(0, 1, 3)), 1e-3 * trace);
  // The same pixels given as RGB at 299×299 (what the network sees after repeat and resize) give the same features.
  auto rgb299 = bilinear(grey.slice(0, 0, 1).expand({-1, 3, -1, -1}), 299);
  EXPECT_TRUE(torch::allclose(inception.features(rgb299), features.slice(0, 0, 1), 1e-4, 1e-5));
}

TEST_F(FidInception, AMissingKeyIsNamed) {
  auto weights = random_inception_weights();
  ASSERT_EQ(weights.back().first, "Mixed_7c.branch_pool.bn.running_var");
  weights.pop_back();
  weights.emplace_back("fc.weight", torch::zeros({1008, 2048}));
  test::temp_dir dir;
  save_safetensors(dir / "incomplete.safetensors", weights);
  auto message = error_text([&] { fid_inception::load(dir / "incomplete.safetensors"); });
  EXPECT_NE(message.find("incomplete.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find("missing keys (1): Mixed_7c.branch_pool.bn.running_var"), std::string::npos) << message;
  EXPECT_NE(message.find("unexpected keys (1): fc.weight"), std::string::npos) << message;
}

}  // namespace
}  // namespace hybridiff::models
