#pragma once

#include <filesystem>
#include <string>

namespace hybridiff::test {

/// `../shared/fixtures` (or `$HYBRIDIFF_SHARED/fixtures`): the golden tensors and tiny model folders.
std::filesystem::path fixtures_dir();

/// A fresh folder under the system temp dir, removed with everything in it when the object dies.
class temp_dir {
 public:
  temp_dir();
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

/// Writes `bytes` to `path` as they are.
void write_file(const std::filesystem::path& path, const std::string& bytes);

/// A raw safetensors file: the 8-byte little-endian length of `header`, `header`, then `data`.
std::string safetensors_bytes(const std::string& header, const std::string& data);

}  // namespace hybridiff::test

#include <ATen/core/Tensor.h>

namespace hybridiff::test {

/// The tensor `key` of the fixture file `file` (e.g. "tiny-sdxl-golden.safetensors"), as a CPU tensor.
at::Tensor golden(const std::string& file, const std::string& key);

/// max|actual − expected| / max|expected|: the fixtures' relative error measure.
double relative_error(const at::Tensor& actual, const at::Tensor& expected);

}  // namespace hybridiff::test
