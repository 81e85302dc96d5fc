#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace hybridiff::models {

/// Bounds that keep a hostile header from exhausting memory; the safetensors format itself caps the header at
/// 100 MB.
inline constexpr std::uint64_t max_safetensors_header_bytes = 100ull << 20;
inline constexpr std::size_t max_safetensors_tensor_count = 1u << 20;

/// One tensor's record in a safetensors header. `begin`/`end` are byte offsets inside the data section.
struct tensor_entry {
  std::string name;
  std::string dtype_name;  ///< as written in the file: "F32", "BF16", ...
  at::ScalarType dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;

  std::int64_t numel() const;
};

/// Maps a safetensors dtype name to a torch dtype; throws `hybridiff::error` for unknown names.
at::ScalarType scalar_type_from_safetensors(const std::string& dtype_name);
/// The safetensors name of a torch dtype ("F32", ...); throws for dtypes the format cannot hold.
std::string safetensors_dtype_name(at::ScalarType dtype);

/// The validated header of a safetensors file.
struct safetensors_header {
  std::uint64_t data_offset = 0;          ///< where the data section starts: 8 + header length
  std::vector<tensor_entry> entries;      ///< sorted by name
  std::map<std::string, std::string> metadata;
};

/// Parses and validates the header of the safetensors bytes `[bytes, bytes + size)` (a whole file): header length
/// within the bytes and under `max_safetensors_header_bytes`, valid JSON, at most `max_safetensors_tensor_count`
/// tensors, known dtypes, prod(shape)·sizeof(dtype) equal to the byte range, ranges inside the data section and
/// not overlapping. Throws `hybridiff::error` naming `source` and the defect. Reads nothing past `size`.
safetensors_header parse_safetensors_header(const unsigned char* bytes, std::uint64_t size,
                                            const std::filesystem::path& source);

/// A memory-mapped, fully validated safetensors file. Every header field is checked before any tensor is touched:
/// header length within the file and under `max_safetensors_header_bytes`, valid JSON, known dtypes,
/// prod(shape)·sizeof(dtype) equal to the byte range, ranges inside the data section and not overlapping.
/// Tensors are zero-copy views of the mapping (copy-on-write: writing to one never changes the file); each view
/// keeps the mapping alive.
class safetensors_file {
 public:
  /// Opens and validates `path`; throws `hybridiff::error` naming the file and the defect.
  static std::shared_ptr<const safetensors_file> open(const std::filesystem::path& path);

  ~safetensors_file();
  safetensors_file(const safetensors_file&) = delete;
  safetensors_file& operator=(const safetensors_file&) = delete;

  const std::filesystem::path& path() const { return path_; }
  /// Entries sorted by name.
  const std::vector<tensor_entry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// The entry called `name`, or nullptr.
  const tensor_entry* find(const std::string& name) const;
  /// A CPU tensor viewing the mapped bytes of `name` (copied only when the bytes are misaligned for the dtype).
  at::Tensor tensor(const std::string& name) const;

 private:
  safetensors_file() = default;

  std::filesystem::path path_;
  void* mapping_ = nullptr;
  std::uint64_t file_size_ = 0;
  std::uint64_t data_offset_ = 0;
  std::vector<tensor_entry> entries_;
  std::map<std::string, std::string> metadata_;
  std::weak_ptr<const safetensors_file> self_;
};

/// Writes `tensors` (any device, contiguous or not) as a safetensors file, atomically: the bytes go to a temporary
/// file in the same folder that is renamed over `path` once complete, so a crash never leaves a half-written file.
void save_safetensors(const std::filesystem::path& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// A checkpoint: one safetensors file, or the shards listed by a `*.safetensors.index.json` (its `weight_map`).
class checkpoint {
 public:
  /// `path` is a `.safetensors` file or a shard index (`.safetensors.index.json`, `.safetensors.index.fp16.json`:
  /// any `.json`).
  static checkpoint open(const std::filesystem::path& path);
  /// A checkpoint of tensors already at hand (views of another checkpoint's tensors under other names: a
  /// single-file checkpoint read as one diffusers component). `files` are where they come from, for errors.
  static checkpoint of_tensors(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                               std::vector<std::filesystem::path> files);

  /// Every tensor of every shard, sorted by name.
  const std::vector<tensor_entry>& entries() const { return entries_; }
  const tensor_entry* find(const std::string& name) const;
  at::Tensor tensor(const std::string& name) const;
  /// The files this checkpoint reads.
  std::vector<std::filesystem::path> files() const;

 private:
  std::vector<std::shared_ptr<const safetensors_file>> shards_;
  std::vector<tensor_entry> entries_;
  std::map<std::string, std::size_t> shard_of_;  // tensor name -> index into shards_
  std::map<std::string, at::Tensor> held_;       // of_tensors: the tensors themselves
  std::vector<std::filesystem::path> held_files_;
};

/// The weights of a component folder, named as diffusers and transformers save them: `<stem>.safetensors` or its
/// shard index `<stem>.safetensors.index.json`, where the stem is `diffusion_pytorch_model` (diffusers) or `model`
/// (transformers). A variant (e.g. "fp16") is named `<stem>.<variant>.safetensors` and its index
/// `<stem>.safetensors.index.<variant>.json`.
///   variant given: that variant's file, else an error naming the folder and the weight files it has.
///   variant empty: the plain file; a folder with only one variant's files (a Hugging Face snapshot downloaded with
///   `variant="fp16"`) loads that variant, said in an info log line; several variants and no plain file is an
///   error listing them.
std::filesystem::path find_component_weights(const std::filesystem::path& component_dir,
                                             const std::string& variant = "");

}  // namespace hybridiff::models
