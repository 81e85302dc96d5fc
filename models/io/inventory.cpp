#include "models/io/inventory.hpp"

#include <set>

#include "models/io/safetensors.hpp"

namespace hybridiff::models {
namespace {

// Persistent buffers that checkpoints store beside the parameters; they are not parameters, so `info` (like
// diffusers' `num_parameters()`) leaves them out of the count.
bool is_persistent_buffer(const std::string& class_name, const std::string& key) {
  return class_name == "SD3Transformer2DModel" && key == "pos_embed.pos_embed";
}

}  // namespace

std::vector<component_summary> summarize(const model_folder& folder) {
  std::vector<component_summary> summaries;
  for (const auto& part : folder.components()) {
    component_summary summary{part.name, part.class_name, {}, 0, 0};
    if (part.has_weights()) {
      auto weights = part.weights ? *part.weights : checkpoint::open(find_component_weights(part.dir));
      std::set<std::string> dtypes;
      for (const auto& entry : weights.entries()) {
        dtypes.insert(entry.dtype_name);
        ++summary.tensor_count;
        if (c10::isFloatingType(entry.dtype) && !is_persistent_buffer(part.class_name, entry.name))
          summary.parameter_count += entry.numel();
      }
      summary.dtypes.assign(dtypes.begin(), dtypes.end());
    }
    summaries.push_back(std::move(summary));
  }
  return summaries;
}

}  // namespace hybridiff::models
