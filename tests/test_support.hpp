#pragma once

#include <filesystem>
#include <optional>
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

/// A TCP port P of 127.0.0.1 with P + 1 free too (a local SLURM cluster takes consecutive ports); test processes
/// running at once pick different ones. Below Linux's ephemeral range (32768+): a rank that retries connecting to a
/// port in that range before anyone listens can be given that very port as its own source port and connect to
/// itself (a TCP self-connect), then wait forever for its own handshake.
int free_port_pair();

/// Writes `bytes` to `path` as they are.
void write_file(const std::filesystem::path& path, const std::string& bytes);

/// A raw safetensors file: the 8-byte little-endian length of `header`, `header`, then `data`.
std::string safetensors_bytes(const std::string& header, const std::string& data);

/// A copy of the model folder `source` laid out as huggingface_hub's cache keeps a download of `repo_id`
/// ("ORG/NAME"): CACHE/models--ORG--NAME/ with blobs/ (the files), snapshots/REVISION/ (relative links into blobs/)
/// and refs/main naming REVISION. With `variant`, the weight files carry that variant's names, as diffusers'
/// `save_pretrained(variant=...)` writes them (model.safetensors → model.fp16.safetensors). Returns the repository
/// folder.
std::filesystem::path make_hub_repository(const std::filesystem::path& source, const std::filesystem::path& cache,
                                          const std::string& repo_id, const std::string& revision,
                                          const std::string& variant = "");

/// Writes tiny-sdxl as one file in the original (LDM) single-file layout, following
/// tests/golden/single_file/tiny-sdxl-single-file-recipe.json: made and checked against diffusers' from_single_file
/// by tests/golden/make_single_file_goldens.py. Returns `path`.
std::filesystem::path write_tiny_sdxl_single_file(const std::filesystem::path& path);
/// A diffusers folder of tiny-sd3 with tests/golden/sd35's transformer (links to the components). Returns `folder`.
std::filesystem::path make_tiny_sd35_folder(const std::filesystem::path& folder);
/// The same for tiny-sd3 with tests/golden/sd35's transformer (qk_norm, dual attention) in the SD3/SD3.5 layout
/// (tests/golden/single_file/tiny-sd35-single-file-recipe.json); `folder` gets the matching diffusers folder (links
/// made by make_tiny_sd35_folder), the single file's --config-from. Returns `path`.
std::filesystem::path write_tiny_sd35_single_file(const std::filesystem::path& path,
                                                  const std::filesystem::path& folder);

/// Sets an environment variable while it lives (restores the earlier value or its absence after).
class scoped_environment {
 public:
  scoped_environment(const std::string& name, const std::string& value);
  ~scoped_environment();
  scoped_environment(const scoped_environment&) = delete;
  scoped_environment& operator=(const scoped_environment&) = delete;

 private:
  std::string name_;
  std::optional<std::string> earlier_;
};

}  // namespace hybridiff::test

#include <ATen/core/Tensor.h>

#include "models/pipelines/pipeline.hpp"

namespace hybridiff::test {

/// The request of a fixture model's golden pipeline run (`fixture` e.g. "tiny-sdxl"): FIXTURE-golden.json's prompt
/// (`prompt_pipe` where it has one, else `prompt`), steps, guidance, size and T5 length (where given), from the
/// initial latents `pipe_init_latents` of FIXTURE-golden.safetensors.
models::generation_request golden_request(const std::string& fixture);
/// The parallel tests' small request: the reference prompt, 32 × 32 pixels, guidance 5, seed 3, `steps` steps.
models::generation_request tiny_request(int steps);

/// tiny-sd3's transformer config with `blocks` blocks (tiny-sd3 has 2) and random weights (seed 7), its
/// scheduler: SD3 splits whose components hold several blocks.
std::shared_ptr<models::diffusion_pipeline> deeper_tiny_sd3(int blocks, const models::load_options& options);

/// The tensor `key` of the fixture file `file` (e.g. "tiny-sdxl-golden.safetensors"), as a CPU tensor.
at::Tensor golden(const std::string& file, const std::string& key);

/// max|actual − expected| / max|expected|: the fixtures' relative error measure.
double relative_error(const at::Tensor& actual, const at::Tensor& expected);

/// relative_error's bound for a normalization kernel's output in `type` against a float32-or-better reference:
/// 1e-5 for float32 (its float32 statistics), 2e-3 for half and 1.6e-2 for bfloat16 (the output rounded once).
double rounding_tolerance(at::ScalarType type);

/// Full float32 cuDNN convolutions while it lives (restores the setting after). cuDNN runs float32 convolutions
/// in TF32 by default, and two runs of one model may pick different algorithms (a channels-last tiny-sdxl: eager
/// and its CUDA graph capture ended ~8e-4 apart on an H100), so float32 comparisons at 1e-5 turn TF32 off.
class full_float32_convolutions {
 public:
  full_float32_convolutions();
  ~full_float32_convolutions();
  full_float32_convolutions(const full_float32_convolutions&) = delete;
  full_float32_convolutions& operator=(const full_float32_convolutions&) = delete;

 private:
  bool tf32_;
};

}  // namespace hybridiff::test
