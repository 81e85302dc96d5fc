#pragma once

#include <memory>
#include <optional>

#include "models/pipelines/clip_pair_pipeline.hpp"
#include "models/networks/sd3_transformer.hpp"
#include "models/networks/t5_encoder.hpp"

namespace hybridiff::models {

/// diffusers' `StableDiffusion3Pipeline`: two CLIP-with-projection encoders (penultimate hidden states
/// concatenated and zero-padded to the joint dimension), T5 states appended along the sequence (zeros when the
/// folder has no text_encoder_3), pooled = both projections concatenated; the negative prompt "" is encoded,
/// not zeroed. Ref: diffusers/pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py.
class sd3_pipeline : public clip_pair_pipeline {
 public:
  static std::unique_ptr<sd3_pipeline> load(const model_folder& folder, const load_options& options,
                                              pipeline_parts parts = pipeline_parts::everything);

  std::string class_name() const override { return "StableDiffusion3Pipeline"; }
  generation_plan plan(const generation_request& request) const override;
  prompt_conditioning encode_prompt(const generation_request& request, const generation_plan& plan) override;
  at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep, const branch_conditioning& cond,
                     module_runner* runner = nullptr) override;
  denoiser_family family() const override { return denoiser_family::transformer; }
  std::int64_t transformer_blocks() const override;
  std::vector<std::int64_t> latent_shape(std::int64_t height, std::int64_t width) const override;
  void merge_loras(lora_merge& loras) override;

  SD3Transformer2DModel& transformer() { return transformer_; }
  torch::nn::Module& denoiser() override { return *transformer_; }

 private:
  sd3_pipeline() = default;
  branch_conditioning encode_text(const std::string& text, std::int64_t max_sequence_length);

  std::optional<t5_tokenizer> tokenizer_3_;
  T5EncoderModel text_encoder_3_{nullptr};
  SD3Transformer2DModel transformer_{nullptr};
};

}  // namespace hybridiff::models
