// The factory: which pipeline class a diffusers folder's model_index.json names. Kept apart from the interface
// (pipeline.cpp) so that the interface does not know every concrete pipeline.
#include <optional>

#include <torch/torch.h>

#include "models/errors.hpp"
#include "models/io/model_folder.hpp"
#include "models/io/single_file.hpp"
#include "models/pipelines/class_conditional_pipeline.hpp"
#include "models/pipelines/pipeline.hpp"
#include "models/pipelines/sd3_pipeline.hpp"
#include "models/pipelines/sdxl_pipeline.hpp"

namespace hybridiff::models {

std::unique_ptr<diffusion_pipeline> load_pipeline(const std::filesystem::path& dir, const load_options& options,
                                                  pipeline_parts parts) {
  // Every LoRA file is read and checked before any weight is loaded.
  std::optional<lora_merge> loras;
  if (!options.loras.empty()) loras.emplace(options.loras);
  auto folder = open_model(dir, options.config_from);
  const auto& name = folder.pipeline_class();
  std::unique_ptr<diffusion_pipeline> pipeline;
  if (name == "StableDiffusionXLPipeline") pipeline = sdxl_pipeline::load(folder, options, parts);
  if (name == "StableDiffusion3Pipeline") pipeline = sd3_pipeline::load(folder, options, parts);
  // Small enough to load whole on every rank.
  if (name == class_conditional_pipeline::class_name_text) pipeline = class_conditional_pipeline::load(folder, options);
  if (pipeline) {
    if (loras) {
      pipeline->merge_loras(*loras);
      loras->finish();
    }
    if (options.fp8) pipeline->quantize_denoiser_to_fp8();
    return pipeline;
  }
  throw error(dir.string() + ": pipeline class '" +
              (name.empty() ? std::string("(none: not a pipeline folder)") : name) +
              "' is not supported (StableDiffusionXLPipeline, StableDiffusion3Pipeline, " +
              std::string(class_conditional_pipeline::class_name_text) + ")");
}

}  // namespace hybridiff::models
