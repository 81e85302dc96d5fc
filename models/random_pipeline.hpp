#pragma once

#include <filesystem>
#include <memory>

#include "models/pipeline.hpp"

namespace hybridiff::models {

/// A pipeline for speed measurements: the denoiser built from a config folder (UNet2DConditionModel or
/// SD3Transformer2DModel) with random weights, the scheduler from a scheduler config folder, and random
/// conditioning of the shapes the real encoders produce (the prompt is not read: there are no text encoders).
/// It has no VAE: `decode` throws. Speed does not depend on the weights' values.
std::unique_ptr<diffusion_pipeline> make_random_pipeline(const std::filesystem::path& denoiser_config_dir,
                                                         const std::filesystem::path& scheduler_config_dir,
                                                         const load_options& options, std::uint64_t seed = 0);

}  // namespace hybridiff::models
