// libFuzzer target: config.json / scheduler_config.json / model_index.json text through the JSON reader (with
// Python's NaN/Infinity literals), the class defaults and the typed accessors the models use.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "models/io/config.hpp"
#include "models/errors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    auto values = hybridiff::models::parse_json_text(text, "fuzz/config.json");
    auto read = hybridiff::models::config_from_json(values, "fuzz/config.json");
    for (const char* name : {"UNet2DConditionModel", "AutoencoderKL", "SD3Transformer2DModel", "CLIPTextModel",
                             "T5EncoderModel", "EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler"}) {
      try {
        auto as = hybridiff::models::as_class(read, name);
        (void)as.get_or<int>("in_channels", 4);
        (void)as.get_or<double>("beta_start", 0.0);
        (void)as.get_or<std::string>("timestep_spacing", "");
        if (as.has("block_out_channels")) (void)as.get<std::vector<int>>("block_out_channels");
        if (as.has("transformer_layers_per_block")) (void)as.get_per_block("transformer_layers_per_block", 4);
      } catch (const hybridiff::error&) {
      }
    }
  } catch (const hybridiff::error&) {
  }
  return 0;
}
