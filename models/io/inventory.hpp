#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/io/model_folder.hpp"

namespace hybridiff::models {

/// What `hybridiff info` reports for one component.
struct component_summary {
  std::string name;
  std::string class_name;
  std::vector<std::string> dtypes;     ///< safetensors dtype names of its weights, sorted; empty without weights
  std::int64_t parameter_count = 0;    ///< elements of its parameters (buffers excluded)
  std::int64_t tensor_count = 0;
};

/// Reads the safetensors headers (no tensor data) of every component of `folder`.
std::vector<component_summary> summarize(const model_folder& folder);

}  // namespace hybridiff::models
