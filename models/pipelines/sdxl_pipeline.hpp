#pragma once

#include <memory>

#include "models/pipelines/clip_pair_pipeline.hpp"
#include "models/networks/unet.hpp"

namespace hybridiff::models {

/// diffusers' `StableDiffusionXLPipeline`: two CLIP encoders (penultimate hidden states concatenated, pooled text
/// embeddings from the second), micro-conditioning time ids (H, W, 0, 0, H, W), UNet, VAE.
/// Ref: diffusers/pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py.
class sdxl_pipeline : public clip_pair_pipeline {
 public:
  static std::unique_ptr<sdxl_pipeline> load(const model_folder& folder, const load_options& options,
                                              pipeline_parts parts = pipeline_parts::everything);

  std::string class_name() const override { return "StableDiffusionXLPipeline"; }
  generation_plan plan(const generation_request& request) const override;
  prompt_conditioning encode_prompt(const generation_request& request, const generation_plan& plan) override;
  at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep, const branch_conditioning& cond,
                     module_runner* runner = nullptr) override;
  denoiser_family family() const override { return denoiser_family::unet; }
  std::int64_t transformer_blocks() const override;
  std::vector<std::int64_t> latent_shape(std::int64_t height, std::int64_t width) const override;
  void merge_loras(lora_merge& loras) override;

  UNet2DConditionModel& unet() { return unet_; }
  torch::nn::Module& denoiser() override { return *unet_; }

 private:
  sdxl_pipeline() = default;
  /// Both encoders on one prompt: context [1, 77, D1 + D2], pooled [1, P2].
  branch_conditioning encode_text(const std::string& text) const;

  bool force_zeros_for_empty_prompt_ = true;
  UNet2DConditionModel unet_{nullptr};
};

}  // namespace hybridiff::models
