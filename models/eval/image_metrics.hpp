#pragma once
// Image quality metrics: PSNR, the Fréchet distance of two feature sets (FID), LPIPS (AlexNet, v0.1) and the
// InceptionV3 of pytorch-fid (2048-d pool features, for FID). The networks load their weights from one
// user-supplied safetensors file each, by the key names of the Python packages (see docs/models.md, `hybridiff metrics`).

#include <cstdint>
#include <filesystem>
#include <memory>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace hybridiff::models {

/// Peak signal-to-noise ratio in dB of two images (or batches) of the same shape with values in [0, 1]:
/// 10·log10(1 / MSE), the MSE taken over every element. Identical images give +infinity. Throws hybridiff::error
/// naming both shapes when they differ, or when the tensors are empty.
double psnr(const at::Tensor& a, const at::Tensor& b);

/// The Fréchet distance of the Gaussians fitted to two feature sets, `features_a` [N, D] and `features_b` [M, D]
/// (as pytorch-fid: sample means and unbiased covariances, in float64):
///   ||μa − μb||² + tr(Σa) + tr(Σb) − 2·tr((Σa·Σb)^½).
/// The last trace is computed exactly from decompositions of symmetric matrices or a singular value decomposition
/// (whichever is cheaper for the sizes; see the .cpp), never from a general matrix square root. Rounding can leave
/// -1e-12 for a set against itself; the result is clamped to >= 0. Throws hybridiff::error for fewer than 2 samples
/// in a set, for sets that are not 2-d or differ in D, or for NaN / infinite features.
double frechet_distance(const at::Tensor& features_a, const at::Tensor& features_b);

/// LPIPS of Zhang et al. 2018, "alex" variant, version 0.1, as the `lpips` package's `LPIPS(net='alex')` computes
/// it: AlexNet features after its 5 ReLUs of both images (inputs in [-1, 1] shifted and scaled by lpips'
/// ScalingLayer), unit-normalised over channels, squared difference, a 1×1 linear layer per level (lin0..lin4, no
/// bias), spatial mean, summed over the levels.
///
/// The weights file (safetensors) holds exactly the `lpips` package's state-dict keys of the trunk and the linear
/// layers: net.slice1.0.{weight,bias} [64,3,11,11], net.slice2.3.* [192,64,5,5], net.slice3.6.* [384,192,3,3],
/// net.slice4.8.* [256,384,3,3], net.slice5.10.* [256,256,3,3], lin0.model.1.weight [1,64,1,1] .. lin4 [1,256,1,1]
/// (the ScalingLayer constants are built in).
class lpips_alex {
 public:
  /// Loads `weights` onto `device`; throws hybridiff::error naming the file and every missing, unexpected or
  /// mis-shaped key.
  static lpips_alex load(const std::filesystem::path& weights, c10::Device device = c10::kCPU);

  /// The distance of each pair: `a` and `b` [N, C, H, W], C = 1 (repeated to RGB) or 3, values in [0, 1], any
  /// device -> float32 [N] on the CPU. Images with a side under 64 pixels are first upsampled (bilinear) by the
  /// smallest integer factor that brings both sides to >= 64: AlexNet's stride-4 11×11 stem and two stride-2
  /// max-pools shrink a 32×32 image to 1×1 maps for conv3..conv5 (a side under 31 pixels to nothing), where its
  /// 3×3 kernels would see padding almost only. Throws hybridiff::error when the shapes differ.
  at::Tensor distance(const at::Tensor& a, const at::Tensor& b) const;


 private:
  struct network;  // the torch module, defined in image_metrics.cpp
  std::shared_ptr<network> net_;
  c10::Device device_ = c10::kCPU;
};

/// pytorch-fid's InceptionV3 (`fid_inception_v3()`: torchvision's Inception3 with FIDInceptionA/C/E, the
/// TensorFlow 2015-12-05 graph ported): the 2048-d features of its final average pool, for FID.
///
/// The weights file (safetensors) holds the state dict of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
/// with its key names (`Conv2d_1a_3x3.conv.weight`, `Conv2d_1a_3x3.bn.{weight,bias,running_mean,running_var}`,
/// ..., `Mixed_7c.branch_pool.bn.running_var`), without the classifier `fc.*` and without any
/// `*.num_batches_tracked` (neither is used by the features).
class fid_inception {
 public:
  /// Loads `weights` onto `device`; throws hybridiff::error naming the file and every missing, unexpected or
  /// mis-shaped key.
  static fid_inception load(const std::filesystem::path& weights, c10::Device device = c10::kCPU);

  /// `images` [N, C, H, W], C = 1 (repeated to RGB) or 3, values in [0, 1], any device -> float32 [N, 2048] on the
  /// CPU. As pytorch-fid: resized to 299×299 (bilinear, align_corners=False), scaled to [-1, 1]. Runs in batches
  /// of `batch` images.
  at::Tensor features(const at::Tensor& images, std::int64_t batch = 32) const;


 private:
  struct network;  // the torch module, defined in image_metrics.cpp
  std::shared_ptr<network> net_;
  c10::Device device_ = c10::kCPU;
};

}  // namespace hybridiff::models
