#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include <ATen/core/Tensor.h>

namespace hybridiff::models {

/// Writes image [1, C, H, W] or [C, H, W] (C = 1 or 3, values in [0, 1]) as an 8-bit PNG with libpng, rounding as
/// diffusers' `numpy_to_pil` does. Atomic: a temporary file renamed over `path`, so a crash never leaves half a PNG.
void save_png(const std::filesystem::path& path, const at::Tensor& image);

/// The PNG save_png writes, in memory (an HTTP response's image).
std::vector<std::uint8_t> encode_png(const at::Tensor& image);

/// Reads an 8-bit grey or RGB(A) PNG as [1, C, H, W] float32 in [0, 1] (alpha dropped).
at::Tensor load_png(const std::filesystem::path& path);

/// Reads `path` (safetensors) and returns its tensor `name`; throws naming the file when absent.
at::Tensor load_named_tensor(const std::filesystem::path& path, const std::string& name);

}  // namespace hybridiff::models
