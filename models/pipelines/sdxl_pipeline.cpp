#include "models/pipelines/sdxl_pipeline.hpp"

#include "models/errors.hpp"
#include "models/io/single_file.hpp"

namespace hybridiff::models {

std::unique_ptr<sdxl_pipeline> sdxl_pipeline::load(const model_folder& folder, const load_options& options,
                                                  pipeline_parts parts) {
  std::unique_ptr<sdxl_pipeline> pipeline(new sdxl_pipeline());
  pipeline->open(folder, options, {"scheduler", "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "unet", "vae"});
  const auto& index = folder.index();
  if (index.contains("force_zeros_for_empty_prompt") && index["force_zeros_for_empty_prompt"].is_boolean())
    pipeline->force_zeros_for_empty_prompt_ = index["force_zeros_for_empty_prompt"].get<bool>();
  pipeline->unet_ = load_unet(folder.get("unet").dir, component_options(folder, "unet", options));
  pipeline->default_size_ = folder.component_config("unet").get_or<std::int64_t>("sample_size", 128) * pipeline->vae_factor_;
  if (parts == pipeline_parts::denoiser) return pipeline;
  pipeline->load_text_encoders_and_vae(folder, false);
  const auto expected_pooled = pipeline->unet_->config().projection_class_embeddings_input_dim -
                               6 * pipeline->unet_->config().addition_time_embed_dim;
  if (pipeline->unet_->config().text_time && expected_pooled != pipeline->text_encoder_2_->config().projection_dim)
    throw error(folder.dir().string() + ": unet's projection_class_embeddings_input_dim expects pooled text embeddings of " +
                std::to_string(expected_pooled) + " but text_encoder_2 projects to " +
                std::to_string(pipeline->text_encoder_2_->config().projection_dim));
  return pipeline;
}

void sdxl_pipeline::merge_loras(lora_merge& loras) {
  // kohya files of SDXL checkpoints in the original layout name the UNet's modules by input_blocks/middle_block/
  // output_blocks.
  lora_merge::kohya_alias ldm_names;
  if (const auto layout = ldm_unet_layout::from(unet_->config()))
    ldm_names = [layout = *layout](const std::string& name) { return unet_name_from_ldm(name, layout, '_'); };
  loras.merge("unet", *unet_, ldm_names);
  merge_text_encoder_loras(loras);
}

generation_plan sdxl_pipeline::plan(const generation_request& request) const {
  return settle_plan(request, 50, default_size_, 5.0, vae_factor_, "the VAE factor", 8192);
}

branch_conditioning sdxl_pipeline::encode_text(const std::string& text) const {
  auto clips = encode_with_clips(text);
  return {torch::cat(clips.hidden, -1), clips.pooled[1], at::Tensor()};  // pooled: the second encoder's projection
}

prompt_conditioning sdxl_pipeline::encode_prompt(const generation_request& request, const generation_plan& plan) {
  if (!text_encoder_) denoiser_only("encode prompts");
  prompt_conditioning result;
  result.positive = encode_text(request.prompt);
  if (!request.negative_prompt && force_zeros_for_empty_prompt_) {
    result.negative = {torch::zeros_like(result.positive.context), torch::zeros_like(result.positive.pooled), at::Tensor()};
  } else {
    result.negative = encode_text(request.negative_prompt.value_or(""));
  }
  // Micro-conditioning: original size, crop top-left, target size.
  auto time_ids = torch::tensor({static_cast<double>(plan.height), static_cast<double>(plan.width), 0.0, 0.0,
                                 static_cast<double>(plan.height), static_cast<double>(plan.width)},
                                torch::kFloat32)
                      .unsqueeze(0)
                      .to(placement_.device, result.positive.context.scalar_type());
  result.positive.time_ids = time_ids;
  result.negative.time_ids = time_ids;
  return result;
}

at::Tensor sdxl_pipeline::predict(const at::Tensor& latents, const at::Tensor& timestep, const branch_conditioning& cond,
                                  module_runner* runner) {
  const UNet2DConditionModelImpl::conditioning unet_cond{cond.context, cond.pooled, cond.time_ids};
  return runner != nullptr ? unet_->forward(latents, timestep, unet_cond, *runner) : unet_->forward(latents, timestep, unet_cond);
}

std::int64_t sdxl_pipeline::transformer_blocks() const { return 0; }

std::vector<std::int64_t> sdxl_pipeline::latent_shape(std::int64_t height, std::int64_t width) const {
  const auto factor = vae_factor_;
  return {1, unet_->config().in_channels, height / factor, width / factor};
}

}  // namespace hybridiff::models
