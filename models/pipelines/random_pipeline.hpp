#pragma once

#include <filesystem>
#include <memory>

#include <torch/nn/module.h>

#include "models/io/config.hpp"
#include "models/networks/sd3_transformer.hpp"
#include "models/networks/unet.hpp"
#include "models/pipelines/pipeline.hpp"

namespace hybridiff::models {

/// A pipeline for speed measurements: the denoiser built from a config folder (UNet2DConditionModel or
/// SD3Transformer2DModel) with random weights (torch's default initialisation, seeded), the scheduler from a
/// scheduler config folder, and random conditioning of the shapes the real encoders produce (the prompt is not
/// read: there are no text encoders). It has no VAE: `decode` throws. Speed does not depend on the weights' values.
class random_pipeline : public diffusion_pipeline {
 public:
  /// `scheduler_dir` empty: no sampler (make_sampler throws), for timing single denoiser calls. A UNet on a CUDA
  /// device runs channels-last, as the loaders place it, unless `channels_last` is false.
  random_pipeline(const std::filesystem::path& denoiser_dir, const std::filesystem::path& scheduler_dir,
                  const load_options& options, std::uint64_t seed, bool channels_last);

  std::string class_name() const override;
  generation_plan plan(const generation_request& request) const override;
  prompt_conditioning encode_prompt(const generation_request& request, const generation_plan& plan) override;
  at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep, const branch_conditioning& cond,
                     module_runner* runner = nullptr) override;
  denoiser_family family() const override;
  std::int64_t transformer_blocks() const override;
  std::unique_ptr<sampler> make_sampler(const std::string& name) const override;
  at::Tensor decode(const at::Tensor& latents) override;
  std::vector<std::int64_t> latent_shape(std::int64_t height, std::int64_t width) const override;

  torch::nn::Module& denoiser() override;
  /// Whether the denoiser is a UNet running channels-last.
  bool channels_last() const;

 private:
  std::uint64_t seed_;
  std::string class_name_;
  config scheduler_;
  bool has_scheduler_ = false;
  UNet2DConditionModel unet_{nullptr};
  SD3Transformer2DModel transformer_{nullptr};
};

std::unique_ptr<random_pipeline> make_random_pipeline(const std::filesystem::path& denoiser_config_dir,
                                                      const std::filesystem::path& scheduler_config_dir,
                                                      const load_options& options, std::uint64_t seed = 0,
                                                      bool channels_last = true);

}  // namespace hybridiff::models
