#include "models/eval/image_metrics.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "models/errors.hpp"
#include "models/io/safetensors.hpp"
#include "models/io/state_dict.hpp"

namespace hybridiff::models {
namespace {

// Images [N, C, H, W] in [0, 1] with C = 1 or 3 -> float32 [N, 3, H, W] in [-1, 1] on `device` (grey repeated).
at::Tensor rgb_in_unit_range(const at::Tensor& images, const c10::Device& device, const char* metric) {
  if (images.dim() != 4 || (images.size(1) != 1 && images.size(1) != 3))
    throw error(std::string(metric) + ": images must be [N, 1 or 3, H, W], got " + c10::str(images.sizes()));
  auto x = images.to(device, torch::kFloat32).mul(2.0).sub(1.0);  // [N, C, H, W] in [-1, 1]
  return x.size(1) == 1 ? x.repeat({1, 3, 1, 1}) : x;             // [N, 3, H, W]
}

// A symmetric positive semi-definite matrix's square root, from its eigen-decomposition S = V·diag(λ)·Vᵀ:
// V·diag(√λ)·Vᵀ, with rounding's tiny negative eigenvalues clamped to 0.
at::Tensor psd_sqrt(const at::Tensor& matrix) {
  auto [eigenvalues, eigenvectors] = torch::linalg_eigh(matrix);       // [D], [D, D]
  return eigenvectors.mul(eigenvalues.clamp_min(0).sqrt()).mm(eigenvectors.t());  // [D, D]
}

}  // namespace

double psnr(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes())
    throw error("psnr: the images differ in shape: " + c10::str(a.sizes()) + " and " + c10::str(b.sizes()));
  if (a.numel() == 0) throw error("psnr: empty images " + c10::str(a.sizes()));
  const double mse = a.to(torch::kCPU, torch::kFloat64).sub(b.to(torch::kCPU, torch::kFloat64)).square().mean().item<double>();
  if (mse == 0.0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(1.0 / mse);  // the peak is 1: values in [0, 1]
}

double frechet_distance(const at::Tensor& features_a, const at::Tensor& features_b) {
  for (const auto* features : {&features_a, &features_b}) {
    const char* which = features == &features_a ? "the first" : "the second";
    if (features->dim() != 2)
      throw error(std::string("frechet_distance: ") + which + " feature set must be [N, D], got " +
                  c10::str(features->sizes()));
    if (features->size(0) < 2)
      throw error(std::string("frechet_distance: ") + which + " feature set has " + std::to_string(features->size(0)) +
                  " sample(s); a covariance needs at least 2");
  }
  if (features_a.size(1) != features_b.size(1))
    throw error("frechet_distance: the feature sets differ in dimension: " + c10::str(features_a.sizes()) + " and " +
                c10::str(features_b.sizes()));
  auto a = features_a.to(torch::kCPU, torch::kFloat64);  // [N, D]
  auto b = features_b.to(torch::kCPU, torch::kFloat64);  // [M, D]
  if (!torch::isfinite(a).all().item<bool>() || !torch::isfinite(b).all().item<bool>())
    throw error("frechet_distance: the features hold NaN or infinite values");
  const auto n = a.size(0), m = b.size(0), dims = a.size(1);
  auto mean_a = a.mean(0);      // [D]
  auto mean_b = b.mean(0);      // [D]
  auto centred_a = a - mean_a;  // [N, D]
  auto centred_b = b - mean_b;  // [M, D]
  // Unbiased covariances (numpy's np.cov(rowvar=False), as pytorch-fid): Σa = Aᵀ·A / (N − 1) with A the centred
  // features, so tr(Σa) = ||A||²_F / (N − 1).
  const double scale_a = 1.0 / static_cast<double>(n - 1), scale_b = 1.0 / static_cast<double>(m - 1);
  const double trace_a = centred_a.square().sum().item<double>() * scale_a;
  const double trace_b = centred_b.square().sum().item<double>() * scale_b;
  // tr((Σa·Σb)^½) = Σ √λ over the eigenvalues of Σa·Σb (real and >= 0: a product of two PSD matrices). Two exact
  // ways, picked by cost:
  //  * few samples (N·M·min(N, M) below D³, e.g. 50 generated images of 2048-d features): the non-zero
  //    eigenvalues of Aᵀ·A·Bᵀ·B are those of (A·Bᵀ)·(A·Bᵀ)ᵀ, i.e. the squared singular values of A·Bᵀ [N, M], so
  //    the trace is the sum of those singular values times √(scale_a·scale_b). No D×D matrix is formed.
  //  * many samples: Σa·Σb is similar to the symmetric PSD Σa^½·Σb·Σa^½ [D, D]; both eigen-decompositions are of
  //    symmetric matrices (rounding's tiny negative eigenvalues clamped to 0).
  double trace_sqrt = 0.0;
  const double gram_cost = static_cast<double>(n) * static_cast<double>(m) * static_cast<double>(std::min(n, m));
  if (gram_cost < std::pow(static_cast<double>(dims), 3)) {
    auto cross = centred_a.mm(centred_b.t());  // [N, M]
    trace_sqrt = torch::linalg_svdvals(cross).sum().item<double>() * std::sqrt(scale_a * scale_b);
  } else {
    auto cov_a = centred_a.t().mm(centred_a).mul(scale_a);  // [D, D]
    auto cov_b = centred_b.t().mm(centred_b).mul(scale_b);  // [D, D]
    auto root_a = psd_sqrt(cov_a);                          // [D, D]
    auto middle = root_a.mm(cov_b).mm(root_a);              // [D, D]
    middle = (middle + middle.t()).mul(0.5);                // exactly symmetric despite rounding
    trace_sqrt = torch::linalg_eigvalsh(middle).clamp_min(0).sqrt().sum().item<double>();
  }
  const double distance = (mean_a - mean_b).square().sum().item<double>() + trace_a + trace_b - 2.0 * trace_sqrt;
  return std::max(distance, 0.0);  // a distance; rounding can leave -1e-12 for a set against itself
}

// ---------------------------------------------------------------------------------------------------------------
// LPIPS (alex, v0.1). Ref: https://github.com/richzhang/PerceptualSimilarity lpips/lpips.py (LPIPS, ScalingLayer,
// NetLinLayer, normalize_tensor) and lpips/pretrained_networks.py (alexnet: torchvision's alexnet().features cut
// after each ReLU into slice1..slice5).

struct lpips_alex::network : torch::nn::Module {
  network() {
    auto trunk = register_module("net", std::make_shared<torch::nn::Module>());
    // The slices keep torchvision's index of each conv inside alexnet().features: 0, 3, 6, 8, 10.
    struct conv_spec {
      const char* slice;
      const char* index;
      std::int64_t in, out, kernel, stride, padding;
    };
    const conv_spec specs[5] = {{"slice1", "0", 3, 64, 11, 4, 2},
                                {"slice2", "3", 64, 192, 5, 1, 2},
                                {"slice3", "6", 192, 384, 3, 1, 1},
                                {"slice4", "8", 384, 256, 3, 1, 1},
                                {"slice5", "10", 256, 256, 3, 1, 1}};
    for (int level = 0; level < 5; ++level) {
      const auto& spec = specs[level];
      auto slice = trunk->register_module(spec.slice, std::make_shared<torch::nn::Module>());
      convs[level] = slice->register_module(
          spec.index, torch::nn::Conv2d(torch::nn::Conv2dOptions(spec.in, spec.out, spec.kernel)
                                            .stride(spec.stride)
                                            .padding(spec.padding)));
      // lin<k>.model = Sequential(Dropout, Conv2d 1×1 without bias): the conv is child "1".
      auto lin = register_module("lin" + std::to_string(level), std::make_shared<torch::nn::Module>());
      auto model = lin->register_module("model", std::make_shared<torch::nn::Module>());
      lins[level] = model->register_module("1", torch::nn::Conv2d(torch::nn::Conv2dOptions(spec.out, 1, 1).bias(false)));
    }
    // ScalingLayer: from [-1, 1] to the ImageNet statistics AlexNet was trained on.
    shift = torch::tensor({-.030, -.088, -.188}, torch::kFloat32).view({1, 3, 1, 1});
    scale = torch::tensor({.458, .448, .450}, torch::kFloat32).view({1, 3, 1, 1});
  }

  // x [N, 3, H, W] after the ScalingLayer -> the 5 ReLU outputs (for 64×64: [N,64,15,15], [N,192,7,7],
  // [N,384,3,3], [N,256,3,3], [N,256,3,3]).
  std::vector<at::Tensor> features(const at::Tensor& x) {
    std::vector<at::Tensor> outputs;
    auto h = torch::relu(convs[0](x));                              // [N, 64, H1, W1]
    outputs.push_back(h);
    h = torch::relu(convs[1](torch::max_pool2d(h, 3, 2)));          // [N, 192, H2, W2]
    outputs.push_back(h);
    h = torch::relu(convs[2](torch::max_pool2d(h, 3, 2)));          // [N, 384, H3, W3]
    outputs.push_back(h);
    h = torch::relu(convs[3](h));                                   // [N, 256, H3, W3]
    outputs.push_back(h);
    outputs.push_back(torch::relu(convs[4](h)));                    // [N, 256, H3, W3]
    return outputs;
  }

  torch::nn::Conv2d convs[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  torch::nn::Conv2d lins[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  at::Tensor shift, scale;  // [1, 3, 1, 1], not in the weights file
};

lpips_alex lpips_alex::load(const std::filesystem::path& weights, c10::Device device) {
  lpips_alex metric;
  metric.net_ = std::make_shared<network>();
  load_state_dict(*metric.net_, checkpoint::open(weights), {device, torch::kFloat32, ""});
  metric.net_->eval();
  metric.net_->shift = metric.net_->shift.to(device);
  metric.net_->scale = metric.net_->scale.to(device);
  metric.device_ = device;
  return metric;
}

at::Tensor lpips_alex::distance(const at::Tensor& a, const at::Tensor& b) const {
  if (a.sizes() != b.sizes())
    throw error("lpips: the images differ in shape: " + c10::str(a.sizes()) + " and " + c10::str(b.sizes()));
  torch::NoGradGuard no_grad;
  auto prepare = [&](const at::Tensor& images) {
    auto x = rgb_in_unit_range(images, device_, "lpips");  // [N, 3, H, W] in [-1, 1]
    const auto smaller = std::min(x.size(2), x.size(3));
    if (smaller < 64) {
      const auto factor = (64 + smaller - 1) / smaller;
      x = torch::nn::functional::interpolate(
          x, torch::nn::functional::InterpolateFuncOptions()
                 .size(std::vector<std::int64_t>{x.size(2) * factor, x.size(3) * factor})
                 .mode(torch::kBilinear)
                 .align_corners(false));  // [N, 3, H·f, W·f]
    }
    return (x - net_->shift) / net_->scale;
  };
  // Ref: lpips.normalize_tensor: x / (||x||₂ over channels + 1e-10).
  auto unit = [](const at::Tensor& x) { return x / (x.square().sum(1, true).sqrt() + 1e-10); };
  std::vector<at::Tensor> distances;
  const std::int64_t batch = 32;
  for (std::int64_t start = 0; start < a.size(0); start += batch) {
    const auto end = std::min(start + batch, a.size(0));
    auto features_a = net_->features(prepare(a.slice(0, start, end)));
    auto features_b = net_->features(prepare(b.slice(0, start, end)));
    auto total = torch::zeros({end - start}, torch::TensorOptions().device(device_));  // [n]
    for (int level = 0; level < 5; ++level) {
      auto difference = (unit(features_a[level]) - unit(features_b[level])).square();  // [n, C_l, h, w]
      total = total + net_->lins[level](difference).mean({1, 2, 3});                   // [n, 1, h, w] -> [n]
    }
    distances.push_back(total.to(torch::kCPU));
  }
  if (distances.empty()) return torch::zeros({0});
  return torch::cat(distances);  // [N]
}

// ---------------------------------------------------------------------------------------------------------------
// pytorch-fid's InceptionV3. Ref: https://github.com/mseitzer/pytorch-fid src/pytorch_fid/inception.py
// (fid_inception_v3, FIDInceptionA/C/E_1/E_2, InceptionV3 blocks 0..3) on torchvision's models/inception.py
// (Inception3, BasicConv2d, InceptionB, InceptionD). Module names are the checkpoint's keys.
namespace {

// BatchNorm2d in eval mode with exactly the checkpoint's four tensors (LibTorch's BatchNorm2d adds
// num_batches_tracked, which the weights file does not carry).
struct FrozenBatchNorm2dImpl : torch::nn::Module {
  explicit FrozenBatchNorm2dImpl(std::int64_t channels)
      : weight(register_parameter("weight", torch::ones({channels}))),
        bias(register_parameter("bias", torch::zeros({channels}))),
        running_mean(register_buffer("running_mean", torch::zeros({channels}))),
        running_var(register_buffer("running_var", torch::ones({channels}))) {}
  at::Tensor forward(const at::Tensor& x) {
    return torch::batch_norm(x, weight, bias, running_mean, running_var, /*training=*/false, 0.0, /*eps=*/0.001,
                             at::globalContext().userEnabledCuDNN());
  }
  at::Tensor weight, bias, running_mean, running_var;
};
TORCH_MODULE(FrozenBatchNorm2d);

// Ref: torchvision BasicConv2d: conv (no bias) -> BatchNorm (eps 0.001) -> ReLU.
struct BasicConv2dImpl : torch::nn::Module {
  BasicConv2dImpl(std::int64_t in, std::int64_t out, std::vector<std::int64_t> kernel, std::int64_t stride = 1,
                  std::vector<std::int64_t> padding = {0, 0})
      : conv(register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel)
                                                           .stride(stride)
                                                           .padding(padding)
                                                           .bias(false)))),
        bn(register_module("bn", FrozenBatchNorm2d(out))) {}
  at::Tensor forward(const at::Tensor& x) { return torch::relu(bn(conv(x))); }
  torch::nn::Conv2d conv;
  FrozenBatchNorm2d bn;
};
TORCH_MODULE(BasicConv2d);

// Shorthands for the kernel shapes: square k×k, and the factorised 1×7 / 7×1 with their "same" padding.
BasicConv2d square(std::int64_t in, std::int64_t out, std::int64_t k, std::int64_t stride = 1, std::int64_t pad = 0) {
  return BasicConv2d(in, out, std::vector<std::int64_t>{k, k}, stride, std::vector<std::int64_t>{pad, pad});
}
BasicConv2d row(std::int64_t in, std::int64_t out, std::int64_t k) {  // 1×k
  return BasicConv2d(in, out, std::vector<std::int64_t>{1, k}, 1, std::vector<std::int64_t>{0, k / 2});
}
BasicConv2d column(std::int64_t in, std::int64_t out, std::int64_t k) {  // k×1
  return BasicConv2d(in, out, std::vector<std::int64_t>{k, 1}, 1, std::vector<std::int64_t>{k / 2, 0});
}

// TensorFlow's average pool leaves the zero padding out of the mean (pytorch-fid's patch).
at::Tensor tf_average_pool(const at::Tensor& x) {
  return torch::avg_pool2d(x, 3, 1, 1, /*ceil_mode=*/false, /*count_include_pad=*/false);
}

// FIDInceptionA: [N, in, 35, 35] -> [N, 224 + pool_features, 35, 35].
struct FIDInceptionAImpl : torch::nn::Module {
  FIDInceptionAImpl(std::int64_t in, std::int64_t pool_features)
      : branch1x1(register_module("branch1x1", square(in, 64, 1))),
        branch5x5_1(register_module("branch5x5_1", square(in, 48, 1))),
        branch5x5_2(register_module("branch5x5_2", square(48, 64, 5, 1, 2))),
        branch3x3dbl_1(register_module("branch3x3dbl_1", square(in, 64, 1))),
        branch3x3dbl_2(register_module("branch3x3dbl_2", square(64, 96, 3, 1, 1))),
        branch3x3dbl_3(register_module("branch3x3dbl_3", square(96, 96, 3, 1, 1))),
        branch_pool(register_module("branch_pool", square(in, pool_features, 1))) {}
  at::Tensor forward(const at::Tensor& x) {
    return torch::cat({branch1x1(x),                                           // [N, 64, h, w]
                       branch5x5_2(branch5x5_1(x)),                            // [N, 64, h, w]
                       branch3x3dbl_3(branch3x3dbl_2(branch3x3dbl_1(x))),      // [N, 96, h, w]
                       branch_pool(tf_average_pool(x))},                       // [N, pool_features, h, w]
                      1);
  }
  BasicConv2d branch1x1, branch5x5_1, branch5x5_2, branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3, branch_pool;
};
TORCH_MODULE(FIDInceptionA);

// InceptionB (Mixed_6a, torchvision's): [N, 288, 35, 35] -> [N, 768, 17, 17].
struct InceptionBImpl : torch::nn::Module {
  explicit InceptionBImpl(std::int64_t in)
      : branch3x3(register_module("branch3x3", square(in, 384, 3, 2))),
        branch3x3dbl_1(register_module("branch3x3dbl_1", square(in, 64, 1))),
        branch3x3dbl_2(register_module("branch3x3dbl_2", square(64, 96, 3, 1, 1))),
        branch3x3dbl_3(register_module("branch3x3dbl_3", square(96, 96, 3, 2))) {}
  at::Tensor forward(const at::Tensor& x) {
    return torch::cat({branch3x3(x),                                        // [N, 384, 17, 17]
                       branch3x3dbl_3(branch3x3dbl_2(branch3x3dbl_1(x))),   // [N, 96, 17, 17]
                       torch::max_pool2d(x, 3, 2)},                         // [N, in, 17, 17]
                      1);
  }
  BasicConv2d branch3x3, branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3;
};
TORCH_MODULE(InceptionB);

// FIDInceptionC: [N, 768, 17, 17] -> [N, 768, 17, 17].
struct FIDInceptionCImpl : torch::nn::Module {
  FIDInceptionCImpl(std::int64_t in, std::int64_t c7)
      : branch1x1(register_module("branch1x1", square(in, 192, 1))),
        branch7x7_1(register_module("branch7x7_1", square(in, c7, 1))),
        branch7x7_2(register_module("branch7x7_2", row(c7, c7, 7))),
        branch7x7_3(register_module("branch7x7_3", column(c7, 192, 7))),
        branch7x7dbl_1(register_module("branch7x7dbl_1", square(in, c7, 1))),
        branch7x7dbl_2(register_module("branch7x7dbl_2", column(c7, c7, 7))),
        branch7x7dbl_3(register_module("branch7x7dbl_3", row(c7, c7, 7))),
        branch7x7dbl_4(register_module("branch7x7dbl_4", column(c7, c7, 7))),
        branch7x7dbl_5(register_module("branch7x7dbl_5", row(c7, 192, 7))),
        branch_pool(register_module("branch_pool", square(in, 192, 1))) {}
  at::Tensor forward(const at::Tensor& x) {
    auto seven = branch7x7_3(branch7x7_2(branch7x7_1(x)));                                            // [N, 192, h, w]
    auto seven_dbl = branch7x7dbl_5(branch7x7dbl_4(branch7x7dbl_3(branch7x7dbl_2(branch7x7dbl_1(x)))));  // [N, 192, h, w]
    return torch::cat({branch1x1(x), seven, seven_dbl, branch_pool(tf_average_pool(x))}, 1);         // [N, 768, h, w]
  }
  BasicConv2d branch1x1, branch7x7_1, branch7x7_2, branch7x7_3, branch7x7dbl_1, branch7x7dbl_2, branch7x7dbl_3,
      branch7x7dbl_4, branch7x7dbl_5, branch_pool;
};
TORCH_MODULE(FIDInceptionC);

// InceptionD (Mixed_7a, torchvision's): [N, 768, 17, 17] -> [N, 1280, 8, 8].
struct InceptionDImpl : torch::nn::Module {
  explicit InceptionDImpl(std::int64_t in)
      : branch3x3_1(register_module("branch3x3_1", square(in, 192, 1))),
        branch3x3_2(register_module("branch3x3_2", square(192, 320, 3, 2))),
        branch7x7x3_1(register_module("branch7x7x3_1", square(in, 192, 1))),
        branch7x7x3_2(register_module("branch7x7x3_2", row(192, 192, 7))),
        branch7x7x3_3(register_module("branch7x7x3_3", column(192, 192, 7))),
        branch7x7x3_4(register_module("branch7x7x3_4", square(192, 192, 3, 2))) {}
  at::Tensor forward(const at::Tensor& x) {
    return torch::cat({branch3x3_2(branch3x3_1(x)),                                           // [N, 320, 8, 8]
                       branch7x7x3_4(branch7x7x3_3(branch7x7x3_2(branch7x7x3_1(x)))),         // [N, 192, 8, 8]
                       torch::max_pool2d(x, 3, 2)},                                           // [N, 768, 8, 8]
                      1);
  }
  BasicConv2d branch3x3_1, branch3x3_2, branch7x7x3_1, branch7x7x3_2, branch7x7x3_3, branch7x7x3_4;
};
TORCH_MODULE(InceptionD);

// FIDInceptionE_1 (average pool, padding left out) and FIDInceptionE_2 (max pool: the TF graph's quirk):
// [N, in, 8, 8] -> [N, 2048, 8, 8].
struct FIDInceptionEImpl : torch::nn::Module {
  FIDInceptionEImpl(std::int64_t in, bool max_pool)
      : max_pool(max_pool),
        branch1x1(register_module("branch1x1", square(in, 320, 1))),
        branch3x3_1(register_module("branch3x3_1", square(in, 384, 1))),
        branch3x3_2a(register_module("branch3x3_2a", row(384, 384, 3))),
        branch3x3_2b(register_module("branch3x3_2b", column(384, 384, 3))),
        branch3x3dbl_1(register_module("branch3x3dbl_1", square(in, 448, 1))),
        branch3x3dbl_2(register_module("branch3x3dbl_2", square(448, 384, 3, 1, 1))),
        branch3x3dbl_3a(register_module("branch3x3dbl_3a", row(384, 384, 3))),
        branch3x3dbl_3b(register_module("branch3x3dbl_3b", column(384, 384, 3))),
        branch_pool(register_module("branch_pool", square(in, 192, 1))) {}
  at::Tensor forward(const at::Tensor& x) {
    auto three = branch3x3_1(x);                               // [N, 384, 8, 8]
    auto three_dbl = branch3x3dbl_2(branch3x3dbl_1(x));        // [N, 384, 8, 8]
    auto pooled = max_pool ? torch::max_pool2d(x, 3, 1, 1) : tf_average_pool(x);
    return torch::cat({branch1x1(x),                                                         // [N, 320, 8, 8]
                       torch::cat({branch3x3_2a(three), branch3x3_2b(three)}, 1),            // [N, 768, 8, 8]
                       torch::cat({branch3x3dbl_3a(three_dbl), branch3x3dbl_3b(three_dbl)}, 1),  // [N, 768, 8, 8]
                       branch_pool(pooled)},                                                 // [N, 192, 8, 8]
                      1);
  }
  bool max_pool;
  BasicConv2d branch1x1, branch3x3_1, branch3x3_2a, branch3x3_2b, branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3a,
      branch3x3dbl_3b, branch_pool;
};
TORCH_MODULE(FIDInceptionE);

}  // namespace

struct fid_inception::network : torch::nn::Module {
  network()
      : Conv2d_1a_3x3(register_module("Conv2d_1a_3x3", square(3, 32, 3, 2))),
        Conv2d_2a_3x3(register_module("Conv2d_2a_3x3", square(32, 32, 3))),
        Conv2d_2b_3x3(register_module("Conv2d_2b_3x3", square(32, 64, 3, 1, 1))),
        Conv2d_3b_1x1(register_module("Conv2d_3b_1x1", square(64, 80, 1))),
        Conv2d_4a_3x3(register_module("Conv2d_4a_3x3", square(80, 192, 3))),
        Mixed_5b(register_module("Mixed_5b", FIDInceptionA(192, 32))),
        Mixed_5c(register_module("Mixed_5c", FIDInceptionA(256, 64))),
        Mixed_5d(register_module("Mixed_5d", FIDInceptionA(288, 64))),
        Mixed_6a(register_module("Mixed_6a", InceptionB(288))),
        Mixed_6b(register_module("Mixed_6b", FIDInceptionC(768, 128))),
        Mixed_6c(register_module("Mixed_6c", FIDInceptionC(768, 160))),
        Mixed_6d(register_module("Mixed_6d", FIDInceptionC(768, 160))),
        Mixed_6e(register_module("Mixed_6e", FIDInceptionC(768, 192))),
        Mixed_7a(register_module("Mixed_7a", InceptionD(768))),
        Mixed_7b(register_module("Mixed_7b", FIDInceptionE(1280, /*max_pool=*/false))),
        Mixed_7c(register_module("Mixed_7c", FIDInceptionE(2048, /*max_pool=*/true))) {}

  // x [N, 3, 299, 299] in [-1, 1] -> [N, 2048] (pytorch-fid's blocks 0..3).
  at::Tensor forward(const at::Tensor& x) {
    auto h = Conv2d_2b_3x3(Conv2d_2a_3x3(Conv2d_1a_3x3(x)));  // [N, 64, 147, 147]
    h = torch::max_pool2d(h, 3, 2);                           // [N, 64, 73, 73]
    h = Conv2d_4a_3x3(Conv2d_3b_1x1(h));                      // [N, 192, 71, 71]
    h = torch::max_pool2d(h, 3, 2);                           // [N, 192, 35, 35]
    h = Mixed_5d(Mixed_5c(Mixed_5b(h)));                      // [N, 288, 35, 35]
    h = Mixed_6a(h);                                          // [N, 768, 17, 17]
    h = Mixed_6e(Mixed_6d(Mixed_6c(Mixed_6b(h))));            // [N, 768, 17, 17]
    h = Mixed_7c(Mixed_7b(Mixed_7a(h)));                      // [N, 2048, 8, 8]
    return h.mean({2, 3});                                    // adaptive average pool to 1×1: [N, 2048]
  }

  BasicConv2d Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3, Conv2d_3b_1x1, Conv2d_4a_3x3;
  FIDInceptionA Mixed_5b, Mixed_5c, Mixed_5d;
  InceptionB Mixed_6a;
  FIDInceptionC Mixed_6b, Mixed_6c, Mixed_6d, Mixed_6e;
  InceptionD Mixed_7a;
  FIDInceptionE Mixed_7b, Mixed_7c;
};

fid_inception fid_inception::load(const std::filesystem::path& weights, c10::Device device) {
  fid_inception metric;
  metric.net_ = std::make_shared<network>();
  load_state_dict(*metric.net_, checkpoint::open(weights), {device, torch::kFloat32, ""});
  metric.net_->eval();
  metric.device_ = device;
  return metric;
}

at::Tensor fid_inception::features(const at::Tensor& images, std::int64_t batch) const {
  if (batch < 1) throw error("fid_inception: batch " + std::to_string(batch) + " must be positive");
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> features;
  for (std::int64_t start = 0; start < images.size(0); start += batch) {
    auto x = rgb_in_unit_range(images.slice(0, start, std::min(start + batch, images.size(0))), device_,
                               "fid_inception");  // [n, 3, H, W] in [-1, 1]
    // Resizing is linear, so resizing before or after pytorch-fid's 2x - 1 gives the same pixels.
    x = torch::nn::functional::interpolate(x, torch::nn::functional::InterpolateFuncOptions()
                                                  .size(std::vector<std::int64_t>{299, 299})
                                                  .mode(torch::kBilinear)
                                                  .align_corners(false));  // [n, 3, 299, 299]
    features.push_back(net_->forward(x).to(torch::kCPU));                   // [n, 2048]
  }
  if (features.empty()) return torch::zeros({0, 2048});
  return torch::cat(features);  // [N, 2048]
}

}  // namespace hybridiff::models
