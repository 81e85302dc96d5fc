#include "models/io/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <set>

#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "models/errors.hpp"

namespace hybridiff::models {
namespace {

using json = nlohmann::json;

struct dtype_info {
  const char* name;
  at::ScalarType type;
};

const dtype_info known_dtypes[] = {
    {"F64", at::kDouble}, {"F32", at::kFloat},  {"F16", at::kHalf},  {"BF16", at::kBFloat16},
    {"I64", at::kLong},   {"I32", at::kInt},    {"I16", at::kShort}, {"I8", at::kChar},
    {"U8", at::kByte},    {"BOOL", at::kBool},  {"F8_E4M3", at::kFloat8_e4m3fn},
    {"F8_E5M2", at::kFloat8_e5m2},
};

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what) {
  throw error(path.string() + ": " + what);
}

// Multiplies without wrapping; false on overflow.
bool checked_multiply(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

tensor_entry parse_entry(const std::filesystem::path& path, const std::string& name, const json& record,
                         std::uint64_t data_size) {
  auto where = "tensor '" + name + "'";
  if (!record.is_object()) fail(path, where + ": header entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!record.contains(key)) fail(path, where + ": header entry lacks '" + key + "'");
  const auto& dtype = record["dtype"];
  const auto& shape = record["shape"];
  const auto& offsets = record["data_offsets"];
  if (!dtype.is_string()) fail(path, where + ": 'dtype' is not a string");
  if (!shape.is_array()) fail(path, where + ": 'shape' is not an array");
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    fail(path, where + ": 'data_offsets' is not a pair of non-negative integers");

  tensor_entry entry;
  entry.name = name;
  entry.dtype_name = dtype.get<std::string>();
  try {
    entry.dtype = scalar_type_from_safetensors(entry.dtype_name);
  } catch (const error& unknown) {
    fail(path, where + ": " + unknown.what());
  }
  std::uint64_t element_count = 1;
  for (const auto& extent : shape) {
    if (!extent.is_number_unsigned() ||
        extent.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      fail(path, where + ": shape " + shape.dump() + " holds a value that is not a non-negative integer");
    if (!checked_multiply(element_count, extent.get<std::uint64_t>(), element_count))
      fail(path, where + ": shape " + shape.dump() + " overflows");
    entry.shape.push_back(extent.get<std::int64_t>());
  }
  entry.begin = offsets[0].get<std::uint64_t>();
  entry.end = offsets[1].get<std::uint64_t>();
  if (entry.begin > entry.end)
    fail(path, where + ": data_offsets [" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) +
                   "] end before they begin");
  std::uint64_t expected_bytes = 0;
  if (!checked_multiply(element_count, c10::elementSize(entry.dtype), expected_bytes))
    fail(path, where + ": byte size overflows");
  if (entry.end - entry.begin != expected_bytes)
    fail(path, where + ": size mismatch: shape " + shape.dump() + " of " + entry.dtype_name + " needs " +
                   std::to_string(expected_bytes) + " bytes but data_offsets span " +
                   std::to_string(entry.end - entry.begin));
  if (entry.end > data_size)
    fail(path, where + ": data_offsets [" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) +
                   "] reach past the data section of " + std::to_string(data_size) + " bytes (truncated file?)");
  return entry;
}

}  // namespace

std::int64_t tensor_entry::numel() const {
  std::int64_t count = 1;
  for (auto extent : shape) count *= extent;
  return count;
}

at::ScalarType scalar_type_from_safetensors(const std::string& dtype_name) {
  for (const auto& known : known_dtypes)
    if (dtype_name == known.name) return known.type;
  std::string names;
  for (const auto& known : known_dtypes) names += std::string(names.empty() ? "" : ", ") + known.name;
  throw error("unknown dtype '" + dtype_name + "' (known: " + names + ")");
}

std::string safetensors_dtype_name(at::ScalarType dtype) {
  for (const auto& known : known_dtypes)
    if (dtype == known.type) return known.name;
  throw error(std::string("dtype ") + c10::toString(dtype) + " cannot be stored in safetensors");
}

safetensors_header parse_safetensors_header(const unsigned char* bytes, std::uint64_t size,
                                            const std::filesystem::path& path) {
  if (size < 8)
    fail(path, "truncated file: " + std::to_string(size) +
                   " bytes, but a safetensors file starts with an 8-byte header length");
  std::uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];  // little-endian u64
  if (header_size > max_safetensors_header_bytes)
    fail(path, "header length " + std::to_string(header_size) + " exceeds the limit of " +
                   std::to_string(max_safetensors_header_bytes) + " bytes");
  if (header_size > size - 8)
    fail(path, "header length " + std::to_string(header_size) + " is longer than the file (" + std::to_string(size) +
                   " bytes): truncated or not a safetensors file");
  safetensors_header parsed;
  parsed.data_offset = 8 + header_size;
  const std::uint64_t data_size = size - parsed.data_offset;

  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(bytes + 8), reinterpret_cast<const char*>(bytes + 8) + header_size);
  } catch (const json::exception& malformed) {
    fail(path, std::string("header is not valid JSON: ") + malformed.what());
  }
  if (!header.is_object()) fail(path, "header is not a JSON object");
  if (header.size() > max_safetensors_tensor_count + 1)
    fail(path, "header lists " + std::to_string(header.size()) + " tensors, more than the limit of " +
                   std::to_string(max_safetensors_tensor_count));

  for (const auto& [name, record] : header.items()) {
    if (name == "__metadata__") {
      if (!record.is_object()) fail(path, "'__metadata__' is not a JSON object");
      for (const auto& [key, value] : record.items()) {
        if (!value.is_string()) fail(path, "'__metadata__' value of '" + key + "' is not a string");
        parsed.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    parsed.entries.push_back(parse_entry(path, name, record, data_size));
  }

  std::vector<const tensor_entry*> by_offset;
  for (const auto& entry : parsed.entries) by_offset.push_back(&entry);
  std::sort(by_offset.begin(), by_offset.end(), [](const tensor_entry* a, const tensor_entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (std::size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      fail(path, "tensors '" + by_offset[i - 1]->name + "' and '" + by_offset[i]->name +
                     "' have overlapping byte ranges");

  std::sort(parsed.entries.begin(), parsed.entries.end(),
            [](const tensor_entry& a, const tensor_entry& b) { return a.name < b.name; });
  return parsed;
}

std::shared_ptr<const safetensors_file> safetensors_file::open(const std::filesystem::path& path) {
  std::shared_ptr<safetensors_file> file(new safetensors_file());
  file->path_ = path;

  int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat status {};
  if (::fstat(descriptor, &status) != 0 || !S_ISREG(status.st_mode)) {
    ::close(descriptor);
    fail(path, "not a regular file");
  }
  file->file_size_ = static_cast<std::uint64_t>(status.st_size);
  if (file->file_size_ < 8) {
    ::close(descriptor);
    fail(path, "truncated file: " + std::to_string(file->file_size_) +
                   " bytes, but a safetensors file starts with an 8-byte header length");
  }
  // Copy-on-write mapping: tensors viewing it may be written to without touching the file.
  void* mapping = ::mmap(nullptr, file->file_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, descriptor, 0);
  ::close(descriptor);
  if (mapping == MAP_FAILED) fail(path, std::string("mmap failed: ") + std::strerror(errno));
  file->mapping_ = mapping;

  auto header = parse_safetensors_header(static_cast<const unsigned char*>(mapping), file->file_size_, path);
  file->data_offset_ = header.data_offset;
  file->entries_ = std::move(header.entries);
  file->metadata_ = std::move(header.metadata);
  file->self_ = file;
  return file;
}

safetensors_file::~safetensors_file() {
  if (mapping_ != nullptr) ::munmap(mapping_, file_size_);
}

const tensor_entry* safetensors_file::find(const std::string& name) const {
  auto found = std::lower_bound(entries_.begin(), entries_.end(), name,
                                [](const tensor_entry& entry, const std::string& key) { return entry.name < key; });
  return found != entries_.end() && found->name == name ? &*found : nullptr;
}

at::Tensor safetensors_file::tensor(const std::string& name) const {
  const tensor_entry* entry = find(name);
  if (entry == nullptr) fail(path_, "no tensor named '" + name + "'");
  auto* data = static_cast<char*>(mapping_) + data_offset_ + entry->begin;
  auto options = at::TensorOptions().dtype(entry->dtype).device(at::kCPU);
  if (reinterpret_cast<std::uintptr_t>(data) % c10::elementSize(entry->dtype) != 0) {
    // Misaligned for its element type (the header length is not a multiple of 8): copy out.
    auto copy = at::empty(entry->shape, options);
    std::memcpy(copy.data_ptr(), data, entry->end - entry->begin);
    return copy;
  }
  auto keep_alive = self_.lock();
  return at::from_blob(
      data, entry->shape, [keep_alive](void*) mutable { keep_alive.reset(); }, options);
}

void save_safetensors(const std::filesystem::path& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> contiguous;
  std::uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__") throw error(path.string() + ": '__metadata__' cannot name a tensor");
    if (header.contains(name)) throw error(path.string() + ": tensor name '" + name + "' given twice");
    auto cpu = tensor.detach().to(at::kCPU).contiguous();
    auto bytes = static_cast<std::uint64_t>(cpu.numel()) * cpu.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(cpu.scalar_type())},
                    {"shape", cpu.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(cpu);
  }
  auto text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // pad so that the data section is 8-byte aligned
  auto temporary = path;
  temporary += ".partial";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) throw error(temporary.string() + ": cannot open for writing");
    unsigned char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>((text.size() >> (8 * i)) & 0xff);
    out.write(reinterpret_cast<const char*>(length), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& cpu : contiguous)
      out.write(static_cast<const char*>(cpu.data_ptr()), static_cast<std::streamsize>(cpu.numel() * cpu.element_size()));
    out.flush();
    if (!out) {
      std::filesystem::remove(temporary);
      throw error(temporary.string() + ": write failed");
    }
  }
  std::filesystem::rename(temporary, path);
}

checkpoint checkpoint::open(const std::filesystem::path& path) {
  checkpoint result;
  const auto name = path.filename().string();
  // A shard index: NAME.safetensors.index.json, or NAME.safetensors.index.VARIANT.json for a variant.
  const std::string index_suffix = ".json";
  if (name.size() > index_suffix.size() &&
      name.compare(name.size() - index_suffix.size(), index_suffix.size(), index_suffix) == 0) {
    std::ifstream in(path);
    if (!in) fail(path, "cannot open checkpoint index");
    json index;
    try {
      index = json::parse(in);
    } catch (const json::exception& malformed) {
      fail(path, std::string("malformed JSON: ") + malformed.what());
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      fail(path, "checkpoint index has no 'weight_map' object");
    std::map<std::string, std::size_t> shard_index;
    for (const auto& [tensor_name, file_name] : index["weight_map"].items()) {
      if (!file_name.is_string()) fail(path, "weight_map entry '" + tensor_name + "' is not a file name");
      auto shard_name = file_name.get<std::string>();
      if (shard_name.find('/') != std::string::npos || shard_name == ".." || shard_name.empty())
        fail(path, "weight_map entry '" + tensor_name + "' names '" + shard_name + "', not a file in this folder");
      auto [position, inserted] = shard_index.emplace(shard_name, result.shards_.size());
      if (inserted) {
        auto shard_path = path.parent_path() / shard_name;
        if (!std::filesystem::exists(shard_path))
          fail(path, "shard '" + shard_name + "' (holding '" + tensor_name + "') is missing");
        result.shards_.push_back(safetensors_file::open(shard_path));
      }
      const auto& shard = result.shards_[position->second];
      const tensor_entry* entry = shard->find(tensor_name);
      if (entry == nullptr)
        fail(path, "weight_map puts '" + tensor_name + "' in '" + shard_name + "', which does not hold it");
      result.shard_of_[tensor_name] = position->second;
      result.entries_.push_back(*entry);
    }
    std::sort(result.entries_.begin(), result.entries_.end(),
              [](const tensor_entry& a, const tensor_entry& b) { return a.name < b.name; });
  } else {
    result.shards_.push_back(safetensors_file::open(path));
    result.entries_ = result.shards_.front()->entries();
    for (const auto& entry : result.entries_) result.shard_of_[entry.name] = 0;
  }
  return result;
}

checkpoint checkpoint::of_tensors(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                  std::vector<std::filesystem::path> files) {
  checkpoint result;
  for (const auto& [name, value] : tensors) {
    if (!result.held_.emplace(name, value).second) throw error("checkpoint: two tensors named '" + name + "'");
    tensor_entry entry;
    entry.name = name;
    entry.dtype = value.scalar_type();
    entry.dtype_name = safetensors_dtype_name(value.scalar_type());
    entry.shape = value.sizes().vec();
    result.entries_.push_back(std::move(entry));
  }
  std::sort(result.entries_.begin(), result.entries_.end(),
            [](const tensor_entry& a, const tensor_entry& b) { return a.name < b.name; });
  result.held_files_ = std::move(files);
  return result;
}

const tensor_entry* checkpoint::find(const std::string& name) const {
  if (!held_.empty()) {
    auto found = std::lower_bound(entries_.begin(), entries_.end(), name,
                                  [](const tensor_entry& entry, const std::string& key) { return entry.name < key; });
    return found != entries_.end() && found->name == name ? &*found : nullptr;
  }
  auto found = shard_of_.find(name);
  return found == shard_of_.end() ? nullptr : shards_[found->second]->find(name);
}

at::Tensor checkpoint::tensor(const std::string& name) const {
  if (auto held = held_.find(name); held != held_.end()) return held->second;
  auto found = shard_of_.find(name);
  if (found == shard_of_.end()) {
    auto files_read = files();
    throw error((files_read.size() == 1 ? files_read.front().string() : "checkpoint") + ": no tensor named '" +
                name + "'");
  }
  return shards_[found->second]->tensor(name);
}

std::vector<std::filesystem::path> checkpoint::files() const {
  if (!held_files_.empty()) return held_files_;
  std::vector<std::filesystem::path> paths;
  for (const auto& shard : shards_) paths.push_back(shard->path());
  return paths;
}

namespace {

constexpr const char* weight_stems[] = {"diffusion_pytorch_model", "model"};

// The file names of `stem`'s weights in `variant` ("" for the plain ones): the single file, then the shard index.
std::vector<std::string> weight_names(const std::string& stem, const std::string& variant) {
  if (variant.empty()) return {stem + ".safetensors", stem + ".safetensors.index.json"};
  return {stem + "." + variant + ".safetensors", stem + ".safetensors.index." + variant + ".json"};
}

// The variant a weight file's name carries, if it is one of `stem`'s: "fp16" for model.fp16.safetensors and for
// model.safetensors.index.fp16.json; shards (model.fp16-00001-of-00002.safetensors) are reached through an index.
std::optional<std::string> variant_of(const std::string& name, const std::string& stem) {
  const std::string single_prefix = stem + ".", single_suffix = ".safetensors";
  const std::string index_prefix = stem + ".safetensors.index.", index_suffix = ".json";
  auto between = [&](const std::string& prefix, const std::string& suffix) -> std::optional<std::string> {
    if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      return std::nullopt;
    auto middle = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    if (middle.empty() || middle.find_first_of(".-") != std::string::npos) return std::nullopt;
    return middle;
  };
  if (auto index = between(index_prefix, index_suffix)) return index;
  return between(single_prefix, single_suffix);
}

}  // namespace

std::filesystem::path find_component_weights(const std::filesystem::path& component_dir, const std::string& variant) {
  if (!std::filesystem::is_directory(component_dir))
    throw error(component_dir.string() + ": component folder is missing");
  auto first_of = [&](const std::string& wanted) -> std::optional<std::filesystem::path> {
    for (const char* stem : weight_stems)
      for (const auto& name : weight_names(stem, wanted))
        if (std::filesystem::exists(component_dir / name)) return component_dir / name;
    return std::nullopt;
  };
  if (auto found = first_of(variant)) return *found;
  // What the folder has instead: its weight files and the variants among them.
  std::set<std::string> variants, files;
  for (const auto& entry : std::filesystem::directory_iterator(component_dir)) {
    const auto name = entry.path().filename().string();
    if (name.find(".safetensors") == std::string::npos) continue;
    files.insert(name);
    for (const char* stem : weight_stems)
      if (auto found = variant_of(name, stem)) variants.insert(*found);
  }
  auto listed = [](const std::set<std::string>& names) {
    std::string text;
    for (const auto& name : names) text += (text.empty() ? "" : ", ") + name;
    return text.empty() ? std::string("none") : text;
  };
  if (variant.empty() && variants.size() == 1) {
    auto found = first_of(*variants.begin());
    spdlog::info("{}: no plain weights; loading the {} variant ({})", component_dir.string(), *variants.begin(),
                 found->filename().string());
    return *found;
  }
  std::string looked_for;
  for (const char* stem : weight_stems)
    for (const auto& name : weight_names(stem, variant)) looked_for += (looked_for.empty() ? "" : ", ") + name;
  if (variant.empty() && variants.size() > 1)
    throw error(component_dir.string() + ": no plain weights and several variants (" + listed(variants) +
                "): choose one with --variant");
  throw error(component_dir.string() + ": no " + (variant.empty() ? "" : "'" + variant + "' variant ") +
              "weights found (looked for " + looked_for + "; the folder has " + listed(files) + ")");
}

}  // namespace hybridiff::models
