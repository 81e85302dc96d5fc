#pragma once
// Fashion-MNIST, the built-in model's data (Debian package `dataset-fashion-mnist`: gzipped IDX files under
// /usr/share/datasets/fashion-mnist), and the small classifier that measures generated images.

#include <filesystem>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace hybridiff::models {

/// An IDX file (gzip-compressed or plain) of unsigned bytes: a uint8 tensor of its dimensions. Throws
/// hybridiff::error naming the file for a bad magic number, another element type, more than 4 dimensions, or a
/// size that does not match the data.
at::Tensor read_idx(const std::filesystem::path& path);

/// One split of Fashion-MNIST: images uint8 [N, 28, 28], labels int64 [N] in [0, 10).
struct labelled_images {
  at::Tensor images;
  at::Tensor labels;
};
/// `dir` holds train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-... (as the Debian package).
labelled_images load_fashion_mnist(const std::filesystem::path& dir, bool train);
/// $HYBRIDIFF_FASHION_MNIST, else /usr/share/datasets/fashion-mnist.
std::filesystem::path fashion_mnist_dir();
/// The class names, in label order: "t-shirt", "trouser", ..., "ankle boot".
const std::vector<std::string>& fashion_mnist_classes();
/// uint8 [N, 28, 28] -> float [N, 1, 32, 32] in [-1, 1], zero-padded by 2 (black) on every side.
at::Tensor to_model_pixels(const at::Tensor& images);
/// A loaded image [1, C, H, W] in [0, 1] (`load_png`) -> the classifier's input [1, 1, 32, 32] in [-1, 1]: grey
/// (mean of the channels); a 28×28 image is padded with black by 2 on every side, as to_model_pixels does. Other
/// sizes throw hybridiff::error naming `source` (the file).
at::Tensor to_classifier_pixels(const at::Tensor& image, const std::string& source);

/// The quality instrument: a small CNN on 32×32 pixels in [-1, 1]. conv 1→32→64→128 (3×3, ReLU, 2×2 max-pool
/// after each) -> 2048 -> fc1 256 (ReLU; the features for FID) -> fc2 10 logits.
class FashionClassifierImpl : public torch::nn::Module {
 public:
  FashionClassifierImpl();
  at::Tensor features(const at::Tensor& pixels);  ///< [N, 1, 32, 32] -> [N, 256]
  at::Tensor forward(const at::Tensor& pixels);   ///< [N, 1, 32, 32] -> logits [N, 10]

  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(FashionClassifier);

/// A classifier folder: config.json ({"_class_name": "FashionClassifier"}) and model.safetensors.
FashionClassifier load_fashion_classifier(const std::filesystem::path& dir);
/// The share of `images` (uint8 [N, 28, 28]) whose predicted class is `labels` [N].
double classifier_accuracy(FashionClassifier& classifier, const at::Tensor& images, const at::Tensor& labels);

}  // namespace hybridiff::models
