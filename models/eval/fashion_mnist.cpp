#include "models/eval/fashion_mnist.hpp"

#include <zlib.h>

#include <cstdlib>
#include <cstring>

#include <torch/torch.h>

#include "models/io/config.hpp"
#include "models/errors.hpp"
#include "models/io/safetensors.hpp"
#include "models/io/state_dict.hpp"

namespace hybridiff::models {
namespace {

// The whole (decompressed) content of a file; gzread reads plain files as they are.
std::vector<unsigned char> read_all(const std::filesystem::path& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) throw error(path.string() + ": cannot open");
  std::vector<unsigned char> bytes;
  unsigned char buffer[1 << 16];
  int read = 0;
  while ((read = gzread(file, buffer, sizeof(buffer))) > 0) bytes.insert(bytes.end(), buffer, buffer + read);
  int code = 0;
  const std::string problem = read < 0 ? gzerror(file, &code) : "";
  gzclose(file);
  if (read < 0) throw error(path.string() + ": cannot decompress (" + problem + ")");
  return bytes;
}

std::uint32_t big_endian(const unsigned char* bytes) {
  return (std::uint32_t{bytes[0]} << 24) | (std::uint32_t{bytes[1]} << 16) | (std::uint32_t{bytes[2]} << 8) | bytes[3];
}

}  // namespace

at::Tensor read_idx(const std::filesystem::path& path) {
  const auto bytes = read_all(path);
  const auto name = path.string();
  if (bytes.size() < 4 || bytes[0] != 0 || bytes[1] != 0) throw error(name + ": not an IDX file (bad magic number)");
  if (bytes[2] != 0x08) throw error(name + ": IDX element type " + std::to_string(bytes[2]) + " is not unsigned bytes (8)");
  const std::size_t dims = bytes[3];
  if (dims < 1 || dims > 4) throw error(name + ": IDX with " + std::to_string(dims) + " dimensions (1 to 4 supported)");
  if (bytes.size() < 4 + 4 * dims) throw error(name + ": IDX header cut short");
  std::vector<std::int64_t> shape;
  std::uint64_t count = 1;
  for (std::size_t d = 0; d < dims; ++d) {
    shape.push_back(big_endian(&bytes[4 + 4 * d]));
    count *= static_cast<std::uint64_t>(shape.back());
    if (count > (std::uint64_t{1} << 32)) throw error(name + ": IDX dimensions too large");
  }
  const std::size_t offset = 4 + 4 * dims;
  if (bytes.size() - offset != count)
    throw error(name + ": IDX dimensions need " + std::to_string(count) + " bytes of data, the file holds " +
                std::to_string(bytes.size() - offset));
  auto tensor = torch::empty(shape, torch::kUInt8);
  std::memcpy(tensor.data_ptr(), bytes.data() + offset, count);
  return tensor;
}

labelled_images load_fashion_mnist(const std::filesystem::path& dir, bool train) {
  const std::string split = train ? "train" : "t10k";
  auto images = read_idx(dir / (split + "-images-idx3-ubyte.gz"));
  auto labels = read_idx(dir / (split + "-labels-idx1-ubyte.gz"));
  if (images.dim() != 3 || labels.dim() != 1 || images.size(0) != labels.size(0))
    throw error(dir.string() + ": " + split + " images " + std::to_string(images.dim()) + "-d and labels do not pair up");
  if (labels.max().item<int>() >= 10) throw error(dir.string() + ": a " + split + " label is outside [0, 10)");
  return {images, labels.to(torch::kLong)};
}

std::filesystem::path fashion_mnist_dir() {
  if (const char* dir = std::getenv("HYBRIDIFF_FASHION_MNIST")) return dir;
  return "/usr/share/datasets/fashion-mnist";
}

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {"t-shirt", "trouser", "pullover", "dress", "coat",
                                                 "sandal",  "shirt",   "sneaker",  "bag",   "ankle boot"};
  return names;
}

at::Tensor to_model_pixels(const at::Tensor& images) {
  auto pixels = images.to(torch::kFloat32).div(127.5).sub(1.0).unsqueeze(1);  // [N, 1, 28, 28] in [-1, 1]
  return torch::constant_pad_nd(pixels, {2, 2, 2, 2}, -1.0);                     // black border: [N, 1, 32, 32]
}

at::Tensor to_classifier_pixels(const at::Tensor& image, const std::string& source) {
  auto grey = image.mean(1, /*keepdim=*/true).mul(2.0).sub(1.0);  // [1, 1, H, W] in [-1, 1]
  if (grey.size(2) == 28 && grey.size(3) == 28) return torch::constant_pad_nd(grey, {2, 2, 2, 2}, -1.0);
  if (grey.size(2) == 32 && grey.size(3) == 32) return grey;
  throw error(source + ": " + std::to_string(grey.size(3)) + "x" + std::to_string(grey.size(2)) +
              " pixels; the Fashion-MNIST classifier takes 32x32 (or 28x28) images");
}

FashionClassifierImpl::FashionClassifierImpl() {
  auto conv = [](std::int64_t in, std::int64_t out) {
    return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1));
  };
  conv1 = register_module("conv1", conv(1, 32));
  conv2 = register_module("conv2", conv(32, 64));
  conv3 = register_module("conv3", conv(64, 128));
  fc1 = register_module("fc1", torch::nn::Linear(128 * 4 * 4, 256));
  fc2 = register_module("fc2", torch::nn::Linear(256, 10));
}

at::Tensor FashionClassifierImpl::features(const at::Tensor& pixels) {
  auto x = torch::max_pool2d(torch::relu(conv1(pixels)), 2);  // [N, 32, 16, 16]
  x = torch::max_pool2d(torch::relu(conv2(x)), 2);            // [N, 64, 8, 8]
  x = torch::max_pool2d(torch::relu(conv3(x)), 2);            // [N, 128, 4, 4]
  return torch::relu(fc1(x.flatten(1)));                      // [N, 256]
}

at::Tensor FashionClassifierImpl::forward(const at::Tensor& pixels) { return fc2(features(pixels)); }

FashionClassifier load_fashion_classifier(const std::filesystem::path& dir) {
  read_config(dir / "config.json", "FashionClassifier");
  FashionClassifier classifier;
  load_state_dict(*classifier, checkpoint::open(dir / "model.safetensors"));
  classifier->eval();
  return classifier;
}

double classifier_accuracy(FashionClassifier& classifier, const at::Tensor& images, const at::Tensor& labels) {
  torch::NoGradGuard no_grad;
  std::int64_t correct = 0;
  for (std::int64_t start = 0; start < images.size(0); start += 1000) {
    const auto end = std::min(start + 1000, images.size(0));
    auto predicted = classifier->forward(to_model_pixels(images.slice(0, start, end))).argmax(1);
    correct += predicted.eq(labels.slice(0, start, end)).sum().item<std::int64_t>();
  }
  return static_cast<double>(correct) / static_cast<double>(images.size(0));
}

}  // namespace hybridiff::models
