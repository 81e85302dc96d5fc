#include "models/io/image_io.hpp"

#include <png.h>

#include <cstring>
#include <vector>

#include <torch/torch.h>

#include "models/errors.hpp"
#include "models/io/safetensors.hpp"

namespace hybridiff::models {

namespace {

// An image [1, C, H, W] or [C, H, W] (C = 1 or 3, in [0, 1]) as interleaved 8-bit rows [H, W, C], rounded as
// diffusers' `numpy_to_pil` does, and libpng's description of it. `what` names the image in errors.
struct png_pixels {
  at::Tensor bytes;
  png_image description;
};

png_pixels to_png_pixels(const at::Tensor& image, const std::string& what) {
  auto pixels = image.detach().to(torch::kCPU, torch::kFloat32);
  if (pixels.dim() == 4) {
    if (pixels.size(0) != 1)
      throw error(what + ": a PNG holds one image, got a batch of " + std::to_string(pixels.size(0)));
    pixels = pixels[0];
  }
  if (pixels.dim() != 3 || (pixels.size(0) != 1 && pixels.size(0) != 3))
    throw error(what + ": a PNG needs [C, H, W] with C = 1 or 3, got " + c10::str(image.sizes()));
  png_pixels result;
  result.bytes = (pixels.clamp(0, 1) * 255).round().to(torch::kUInt8).permute({1, 2, 0}).contiguous();
  std::memset(&result.description, 0, sizeof(result.description));
  result.description.version = PNG_IMAGE_VERSION;
  result.description.width = static_cast<png_uint_32>(pixels.size(2));
  result.description.height = static_cast<png_uint_32>(pixels.size(1));
  result.description.format = pixels.size(0) == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  return result;
}

}  // namespace

void save_png(const std::filesystem::path& path, const at::Tensor& image) {
  auto pixels = to_png_pixels(image, path.string());
  auto temporary = path;
  temporary += ".partial";
  if (!png_image_write_to_file(&pixels.description, temporary.c_str(), 0, pixels.bytes.data_ptr<std::uint8_t>(), 0,
                               nullptr)) {
    std::string reason = pixels.description.message;
    std::filesystem::remove(temporary);
    throw error(path.string() + ": cannot write PNG: " + reason);
  }
  std::filesystem::rename(temporary, path);
}

std::vector<std::uint8_t> encode_png(const at::Tensor& image) {
  auto pixels = to_png_pixels(image, "encode_png");
  png_alloc_size_t size = 0;  // the first call measures, the second writes
  if (!png_image_write_to_memory(&pixels.description, nullptr, &size, 0, pixels.bytes.data_ptr<std::uint8_t>(), 0,
                                 nullptr))
    throw error(std::string("encode_png: ") + pixels.description.message);
  std::vector<std::uint8_t> png(size);
  if (!png_image_write_to_memory(&pixels.description, png.data(), &size, 0, pixels.bytes.data_ptr<std::uint8_t>(), 0,
                                 nullptr))
    throw error(std::string("encode_png: ") + pixels.description.message);
  png.resize(size);
  return png;
}

at::Tensor load_png(const std::filesystem::path& path) {
  png_image description;
  std::memset(&description, 0, sizeof(description));
  description.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&description, path.c_str()))
    throw error(path.string() + ": cannot read PNG: " + description.message);
  const bool grey = (description.format & PNG_FORMAT_FLAG_COLOR) == 0;
  description.format = grey ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  const auto channels = grey ? 1 : 3;
  std::vector<std::uint8_t> buffer(PNG_IMAGE_SIZE(description));
  if (!png_image_finish_read(&description, nullptr, buffer.data(), 0, nullptr)) {
    std::string reason = description.message;
    png_image_free(&description);
    throw error(path.string() + ": cannot decode PNG: " + reason);
  }
  auto pixels = torch::from_blob(buffer.data(), {static_cast<std::int64_t>(description.height),
                                                 static_cast<std::int64_t>(description.width), channels},
                                 torch::kUInt8);
  return pixels.permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat32) / 255.0;  // [1, C, H, W]
}

at::Tensor load_named_tensor(const std::filesystem::path& path, const std::string& name) {
  auto file = safetensors_file::open(path);
  if (file->find(name) == nullptr) {
    std::string names;
    for (const auto& entry : file->entries()) names += (names.empty() ? "" : ", ") + entry.name;
    throw error(path.string() + ": holds no tensor named '" + name + "' (it holds: " + (names.empty() ? "nothing" : names) + ")");
  }
  return file->tensor(name).clone();
}

}  // namespace hybridiff::models
