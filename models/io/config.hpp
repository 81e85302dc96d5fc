#pragma once

#include <filesystem>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/errors.hpp"

namespace hybridiff::models {

/// Reads a JSON file; errors name the file and, for malformed JSON, the byte where parsing failed. The literals
/// `NaN`, `Infinity` and `-Infinity` that Python's json module writes (e.g. DPM-Solver's `lambda_min_clipped`)
/// are read as the strings "NaN", "Infinity", "-Infinity"; `config::get<double>` turns them back into numbers.
nlohmann::json read_json_file(const std::filesystem::path& path);
/// The same for JSON text; `source` names it in errors.
nlohmann::json parse_json_text(const std::string& text, const std::filesystem::path& source);

/// A component's configuration (`config.json` or `scheduler_config.json`) with the defaults of its diffusers /
/// transformers class filled in for every key the file leaves out, so a config written by an older library
/// version reads as the class would read it. Accessors throw `hybridiff::error` naming the file and key.
class config {
 public:
  config() = default;
  config(nlohmann::json values, std::filesystem::path source);

  const nlohmann::json& values() const { return values_; }
  const std::filesystem::path& source() const { return source_; }
  /// True when `key` is present and not null.
  bool has(const std::string& key) const;

  template <class T>
  T get(const std::string& key) const {
    const auto& value = at(key);
    if constexpr (std::is_floating_point_v<T>) {
      // Python's json writes these non-JSON literals; read_json_file turns them into strings.
      if (value.is_string()) {
        const auto text = value.template get<std::string>();
        if (text == "Infinity") return std::numeric_limits<T>::infinity();
        if (text == "-Infinity") return -std::numeric_limits<T>::infinity();
        if (text == "NaN") return std::numeric_limits<T>::quiet_NaN();
      }
    }
    try {
      return value.get<T>();
    } catch (const nlohmann::json::exception&) {
      throw error(source_.string() + ": config key '" + key + "' has value " + value.dump() +
                  " of the wrong type");
    }
  }
  /// `get<T>(key)`, or `fallback` when the key is absent or null.
  template <class T>
  T get_or(const std::string& key, T fallback) const {
    return has(key) ? get<T>(key) : fallback;
  }
  /// A per-block list that diffusers also accepts as a single number (e.g. `transformer_layers_per_block`):
  /// a scalar is repeated `count` times; a list must have exactly `count` entries.
  std::vector<int> get_per_block(const std::string& key, std::size_t count) const;
  /// Throws naming the file: `message` is what was wrong with `key`.
  [[noreturn]] void reject(const std::string& key, const std::string& message) const;

 private:
  const nlohmann::json& at(const std::string& key) const;

  nlohmann::json values_ = nlohmann::json::object();
  std::filesystem::path source_;
};

/// Reads `path` and fills in the defaults of `class_name` (taken from the file's `_class_name` or
/// `architectures[0]` when empty). Classes without a default table are read as they are.
config read_config(const std::filesystem::path& path, std::string class_name = "");
/// The same for JSON values already read from `source`.
config config_from_json(nlohmann::json values, const std::filesystem::path& source, std::string class_name = "");

/// `values` read as another class would read them, as diffusers' `Class.from_config(other.config)` does: the
/// target class's defaults, overridden by the keys of `values` that the target class knows.
config as_class(const config& values, const std::string& class_name);

}  // namespace hybridiff::models
